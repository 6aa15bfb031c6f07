//! Host code shared by the streaming kernels' GPU halves: binding ranges, row pieces, one
//! uniform buffer of per-dispatch params, reusable output buffers, host-chunk upload, one
//! compute pass submitted with a status word read back, the error for a non-finite row, and
//! the host and device chunk paths of same-shape kernels.

use std::sync::Arc;

use bytemuck::Pod;
use ndarray::{Array2, ArrayView2};

use super::{write_padded, DType, DeviceArray, GpuContext, GrowBuffer, TrackedBuffer};
use crate::error::{Error, Result};

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The smallest step `k` such that `k · unit_bytes` is a multiple of `align`.
pub(crate) fn align_step(align: u64, unit_bytes: u64) -> u64 {
    align / gcd(align, unit_bytes).max(1)
}

/// A binding of `size` bytes of `buffer` from `offset`.
pub(crate) fn bind(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

/// Where a streaming operator stands, to rewind it to after a later stage of the chain failed
/// on the same chunk: its host-side position and channel count, and on the GPU engine its
/// committed state copy. Valid until the operator's next chunk: a chunk writes only the state
/// copies other than the committed one, so the copy a mark names still holds that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamMark {
    /// Channel count fixed by the stream.
    pub(crate) n_channels: Option<usize>,
    /// Samples consumed (absolute position).
    pub(crate) pos: u64,
    /// Bins emitted (binning only).
    pub(crate) next_bin: u64,
    /// The GPU half's committed state copy, and the channel count it was set up for (or any
    /// `Some` when set up at all).
    pub(crate) gpu: Option<(usize, Option<usize>)>,
}

/// Rows of `row_bytes` each that one piece of a chunk binds: a multiple of `step` that fits
/// `max_binding` bytes, and at most `max_rows` (rounded down to a multiple of `step`, but at
/// least `step`). Zero when not even `step` rows fit one binding.
pub(crate) fn rows_per_piece(max_binding: u64, row_bytes: u64, step: u64, max_rows: u64) -> u64 {
    let by_binding = max_binding / row_bytes / step * step;
    by_binding.min((max_rows / step * step).max(step))
}

/// `(first row, rows)` of each piece of `n` rows, `rows_per` rows a piece (the last one shorter).
pub(crate) fn row_pieces(n: u64, rows_per: u64) -> Vec<(u64, u64)> {
    (0..n.div_ceil(rows_per))
        .map(|k| (k * rows_per, rows_per.min(n - k * rows_per)))
        .collect()
}

/// The error for rows of `nc` channels that do not fit one binding of `max_binding` bytes.
pub(crate) fn rows_too_wide(max_binding: u64, nc: usize) -> Error {
    Error::shape(
        "chunk",
        format!(
            "rows of at most {} channels on this adapter",
            max_binding / 4
        ),
        format!("{nc} channels"),
    )
}

/// A uniform buffer holding one params struct per dispatch, at the device's uniform offset
/// alignment (at least 64 bytes apart). It grows geometrically and is otherwise reused.
#[derive(Debug)]
pub(crate) struct ParamsBuffer {
    label: &'static str,
    buf: Option<(TrackedBuffer, u64)>,
}

/// The params of one chunk's dispatches, as written by [`ParamsBuffer::write`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParamsView<'a> {
    buf: &'a wgpu::Buffer,
    stride: u64,
    size: u64,
}

impl ParamsView<'_> {
    /// The binding of dispatch `k`'s params.
    pub(crate) fn binding(&self, k: usize) -> wgpu::BindingResource<'_> {
        bind(self.buf, k as u64 * self.stride, self.size)
    }
}

impl ParamsBuffer {
    /// An empty params buffer named `label`.
    pub(crate) fn new(label: &'static str) -> Self {
        ParamsBuffer { label, buf: None }
    }

    /// Queues `items` (one per dispatch) into the buffer, growing it first when needed.
    /// Queued writes run before the commands of the next submit.
    ///
    /// # Errors
    /// [`Error::DeviceMemory`] or [`Error::DeviceLimit`] when it cannot grow.
    pub(crate) fn write<T: Pod>(
        &mut self,
        ctx: &GpuContext,
        items: &[T],
    ) -> Result<ParamsView<'_>> {
        let stride = (ctx.limits().min_uniform_buffer_offset_alignment as u64).max(64);
        let item = std::mem::size_of::<T>();
        let pbytes = items.len() as u64 * stride;
        if self.buf.as_ref().is_none_or(|(_, s)| *s < pbytes) {
            self.buf = None;
        }
        if self.buf.is_none() {
            let size = pbytes.next_power_of_two().max(256);
            self.buf = Some((ctx.uniform(size, self.label)?, size));
        }
        let (buf, _) = self
            .buf
            .as_ref()
            .ok_or_else(|| Error::DeviceArray("no params buffer".into()))?;
        let mut pdata = vec![0u8; pbytes as usize];
        for (k, d) in items.iter().enumerate() {
            let at = k * stride as usize;
            pdata[at..at + item].copy_from_slice(bytemuck::bytes_of(d));
        }
        write_padded(ctx, buf, 0, &pdata);
        Ok(ParamsView {
            buf,
            stride,
            size: item as u64,
        })
    }
}

/// An output buffer of at least `bytes` in `slot`, reused while nobody else holds it, otherwise
/// replaced by a new one (sized to the next power of two).
///
/// # Errors
/// [`Error::DeviceMemory`] or [`Error::DeviceLimit`] when a new one cannot be made; then the
/// slot is empty.
pub(crate) fn reusable_output(
    ctx: &GpuContext,
    slot: &mut Option<Arc<TrackedBuffer>>,
    bytes: u64,
    label: &str,
) -> Result<Arc<TrackedBuffer>> {
    let need = bytes.max(16).next_multiple_of(4);
    if let Some(b) = slot.as_ref().filter(|b| {
        Arc::strong_count(b) == 1 && b.size() >= need && ctx.bindable_for(b.size(), need)
    }) {
        return Ok(b.clone());
    }
    *slot = None;
    let b = Arc::new(ctx.storage_rounded(need, label)?);
    *slot = Some(b.clone());
    Ok(b)
}

/// Uploads a host chunk into `input` (grown to fit) and returns the buffer.
pub(crate) fn upload_chunk(
    ctx: &GpuContext,
    input: &mut GrowBuffer,
    chunk: ArrayView2<'_, f32>,
) -> Result<wgpu::Buffer> {
    let data = chunk.as_standard_layout();
    let flat = data
        .as_slice()
        .ok_or_else(|| Error::DeviceArray("chunk not contiguous after copy".into()))?;
    let bytes: &[u8] = bytemuck::cast_slice(flat);
    ctx.scoped(|| {
        let buf = input.ensure(ctx, bytes.len() as u64)?;
        write_padded(ctx, &buf, 0, bytes);
        Ok(buf)
    })
}

/// Writes the `f32` chunk (row-major) to the start of `buf` and checks it for non-finite
/// values in the same pass: each block of it is checked as it is read from memory and copied
/// into the staging memory from cache, so a chunk is read from memory once, not twice.
///
/// # Errors
/// [`Error::NonFinite`] naming the first non-finite value's row and channel, as
/// `validate::check_finite` would; the bytes written by then reach `buf` at the next submit,
/// so `buf` must be a scratch buffer that no accepted chunk still needs.
pub(crate) fn upload_checked(
    ctx: &GpuContext,
    buf: &wgpu::Buffer,
    chunk: ArrayView2<'_, f32>,
) -> Result<()> {
    /// Floats per block (16 KiB): checked, then copied while still in L1.
    const BLOCK: usize = 4096;
    let data = chunk.as_standard_layout();
    let flat = data
        .as_slice()
        .ok_or_else(|| Error::DeviceArray("chunk not contiguous after copy".into()))?;
    let Some(size) = wgpu::BufferSize::new(std::mem::size_of_val(flat) as u64) else {
        return Ok(());
    };
    let Some(mut view) = ctx.queue.write_buffer_with(buf, 0, size) else {
        // wgpu refuses the write when its validation fails: a lost device (say so when it
        // is known) or a buffer too small.
        let _ = ctx.device.poll(wgpu::PollType::Poll);
        ctx.check_alive()?;
        return Err(Error::Validation(
            "the queue refused the upload (a lost device, or a buffer too small)".into(),
        ));
    };
    let nc = chunk.ncols().max(1);
    for (k, block) in flat.chunks(BLOCK).enumerate() {
        if !block.iter().fold(true, |ok, x| ok & x.is_finite()) {
            let at = k * BLOCK + block.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(Error::NonFinite {
                what: "chunk",
                sample: at / nc,
                channel: at % nc,
                value: flat[at] as f64,
            });
        }
        let from = k * BLOCK * 4;
        view.slice(from..from + block.len() * 4)
            .copy_from_slice(bytemuck::cast_slice(block));
    }
    Ok(())
}

/// Errors out unless `chunk` lives on `ctx`.
pub(crate) fn check_context(ctx: &Arc<GpuContext>, chunk: &DeviceArray) -> Result<()> {
    if Arc::ptr_eq(chunk.context(), ctx) {
        Ok(())
    } else {
        Err(Error::DeviceArray(
            "the chunk lives on another GPU context".into(),
        ))
    }
}

/// A GPU kernel that maps an `(n, nc)` f32 chunk to an f32 output of the same shape (the
/// filter, the common-average reference) and sets a status word (0, or `!row` of the first
/// row holding a non-finite sample). The required methods give its buffers, record it and
/// commit its new state; the provided ones run host and device chunks with them.
pub(crate) trait SameShapeKernel {
    /// The context the kernel's buffers live on.
    fn context(&self) -> &Arc<GpuContext>;

    /// The upload buffer for host chunks.
    fn input_buffer(&mut self) -> &mut GrowBuffer;

    /// An output buffer of at least `bytes`.
    fn output_buffer(&mut self, bytes: u64) -> Result<Arc<TrackedBuffer>>;

    /// The status word the kernel sets.
    fn status(&self) -> &wgpu::Buffer;

    /// Records the kernel on the `n × nc` chunk in `input` (`n > 0`) into `output`, from the
    /// committed state, inside its own error scope; returns the commands and a token naming
    /// the state they leave.
    fn record(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
    ) -> Result<(wgpu::CommandEncoder, usize)>;

    /// Makes the state named by a [`SameShapeKernel::record`] token the committed one.
    fn commit(&mut self, token: usize);

    /// Runs the kernel on the `n × nc` chunk in `input` (`n > 0`) into `output` and commits;
    /// with `read_output`, the output's bytes come back too.
    fn run(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
        read_output: bool,
    ) -> Result<Option<Vec<u8>>> {
        let ctx = self.context().clone();
        let (enc, token) = self.record(input, output, n, nc)?;
        let reads: &[(&wgpu::Buffer, u64, u64)] = if read_output {
            &[(output, 0, (n * nc * 4) as u64)]
        } else {
            &[]
        };
        let (status, bytes) = ctx.scoped(|| read_with_status(&ctx, enc, self.status(), reads))?;
        if status != 0 {
            return Err(ctx
                .scoped(|| Ok(non_finite_row(&ctx, input, !status as usize, nc)))
                .unwrap_or_else(|e| e));
        }
        self.commit(token);
        Ok(read_output.then_some(bytes))
    }

    /// A host chunk (non-empty, checked finite): upload, run, read the output back.
    fn process_host(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (n, nc) = chunk.dim();
        let ctx = self.context().clone();
        let input = upload_chunk(&ctx, self.input_buffer(), chunk)?;
        let output = ctx.scoped(|| self.output_buffer((n * nc * 4) as u64))?;
        let out = self.run(&input, &output, n, nc, true)?.unwrap_or_default();
        let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&out);
        Array2::from_shape_vec((n, nc), vals).map_err(|e| Error::DeviceArray(e.to_string()))
    }

    /// A rank-2 f32 device chunk: run, leave the output on the device.
    fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceArray> {
        let (output, n, nc) = self.device_output(chunk)?;
        if n > 0 {
            let input = chunk.buffer.clone();
            self.run(&input, &output, n, nc, false)?;
        }
        Ok(DeviceArray::from_buffer(
            self.context(),
            output,
            chunk.shape().to_vec(),
            DType::F32,
        ))
    }

    /// [`SameShapeKernel::process_device`] of a non-empty chunk, recorded for a submission
    /// shared with the stages after it (the chain's): the kernel commits its new state at
    /// once (see [`Staged`]).
    fn stage_device(&mut self, chunk: &DeviceArray) -> Result<(DeviceArray, Staged)> {
        let (output, n, nc) = self.device_output(chunk)?;
        let ctx = self.context().clone();
        let (enc, token) = self.record(chunk.buffer(), &output, n, nc)?;
        self.commit(token);
        let staged = Staged {
            commands: enc.finish(),
            checks: vec![self.status().clone()],
        };
        let out = DeviceArray::from_buffer(&ctx, output, chunk.shape().to_vec(), DType::F32);
        Ok((out, staged))
    }

    /// The output buffer for the rank-2 device `chunk` of this context, and its shape.
    fn device_output(&mut self, chunk: &DeviceArray) -> Result<(Arc<TrackedBuffer>, usize, usize)> {
        let ctx = self.context().clone();
        check_context(&ctx, chunk)?;
        let shape = chunk.shape();
        let [n, nc] = shape[..] else {
            return Err(Error::shape(
                "chunk",
                "(samples, channels)",
                format!("{shape:?}"),
            ));
        };
        let output = ctx.scoped(|| self.output_buffer((n * nc * 4) as u64))?;
        Ok((output, n, nc))
    }
}

/// One stage's commands, recorded for a submission shared with the stages after it (the
/// chain's one round trip per chunk), and the status words to check once they have run. The
/// stage has already moved on to its new state: a caller that finds a word non-zero rewinds
/// it (see [`StreamMark`]).
#[derive(Debug)]
pub(crate) struct Staged {
    /// The stage's commands.
    pub(crate) commands: wgpu::CommandBuffer,
    /// Buffers whose first 32-bit word reads 0 when the stage ran cleanly.
    pub(crate) checks: Vec<wgpu::Buffer>,
}

/// Clears `status` and records one compute pass named `label` with `record`.
pub(crate) fn record_pass(
    ctx: &GpuContext,
    status: &wgpu::Buffer,
    label: &str,
    record: impl FnOnce(&mut wgpu::ComputePass<'_>),
) -> wgpu::CommandEncoder {
    let mut enc = ctx.encoder();
    enc.clear_buffer(status, 0, None);
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        record(&mut pass);
    }
    enc
}

/// Submits `enc` and reads back the `reads` ranges and then the status word. Returns the
/// status word and the ranges' bytes, concatenated.
pub(crate) fn read_with_status(
    ctx: &GpuContext,
    enc: wgpu::CommandEncoder,
    status: &wgpu::Buffer,
    reads: &[(&wgpu::Buffer, u64, u64)],
) -> Result<(u32, Vec<u8>)> {
    let mut all = Vec::with_capacity(reads.len() + 1);
    all.extend_from_slice(reads);
    all.push((status, 0, 4));
    let mut bytes = ctx.submit_and_read(enc, &all)?;
    let at = bytes
        .len()
        .checked_sub(4)
        .ok_or_else(|| Error::Readback("status word missing from the read-back".into()))?;
    let word: u32 = bytemuck::pod_read_unaligned(&bytes[at..]);
    bytes.truncate(at);
    Ok((word, bytes))
}

/// The error for the first non-finite sample of row `row` of the `· × nc` f32 chunk in
/// `input` (the row the device reported): reads that row back to name the channel and value.
pub(crate) fn non_finite_row(
    ctx: &GpuContext,
    input: &wgpu::Buffer,
    row: usize,
    nc: usize,
) -> Error {
    let off = row as u64 * nc as u64 * 4;
    let enc = ctx.encoder();
    match ctx.submit_and_read(enc, &[(input, off, nc as u64 * 4)]) {
        Ok(bytes) => {
            let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
            let (channel, value) = vals
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
                .map(|(c, &v)| (c, v as f64))
                .unwrap_or((0, f64::NAN));
            Error::NonFinite {
                what: "chunk",
                sample: row,
                channel,
                value,
            }
        }
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_pieces() {
        assert_eq!(align_step(32, 148), 8);
        assert_eq!(align_step(256, 1024), 1);
        assert_eq!(rows_per_piece(1 << 20, 1024, 1, u64::MAX), 1024);
        assert_eq!(rows_per_piece(1 << 20, 1024, 1, 100), 100);
        assert_eq!(rows_per_piece(1 << 20, 148, 8, 5), 8);
        assert_eq!(rows_per_piece(100, 148, 8, 5), 0);
        assert_eq!(row_pieces(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert!(row_pieces(0, 4).is_empty());
    }
}
