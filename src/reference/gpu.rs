//! GPU half of the common-average reference around `shaders/reference.wgsl`.
//!
//! Per chunk: one uniform write, one encoder, two dispatches per piece of rows (a single
//! piece unless the chunk passes one binding), one submit and one small read-back (a status
//! word; the output too for host chunks).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use crate::error::{Error, Result};
use crate::gpu::{grid, write_padded, Binding, DType, DeviceArray, GpuContext, GrowBuffer};
use crate::shaders::REFERENCE;

/// Invocations per workgroup.
const WG_SIZE: u32 = 64;

/// Most channels: every loop of the kernels runs at most `2 · channels` iterations, kept
/// below the 65 535 after which llvmpipe silently ends an invocation.
pub(crate) const MAX_CHANNELS: usize = 16_384;

/// Group 0: params, samples, mid, output, status.
const LAYOUT: [Binding; 5] = [
    Binding::Uniform,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// The shader's `Params` (one per piece).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct PieceParams {
    n_channels: u32,
    rows: u32,
    row0: u32,
    pad: u32,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn bind(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

/// GPU buffers of one [`super::CommonAverage`].
pub(crate) struct GpuCar {
    ctx: Arc<GpuContext>,
    centre: wgpu::ComputePipeline,
    subtract: wgpu::ComputePipeline,
    median: bool,
    input: GrowBuffer,
    mid: GrowBuffer,
    output: Option<Arc<wgpu::Buffer>>,
    params: Option<(wgpu::Buffer, u64)>,
    status: wgpu::Buffer,
}

impl std::fmt::Debug for GpuCar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCar")
            .field("ctx", &self.ctx)
            .field("median", &self.median)
            .finish()
    }
}

impl GpuCar {
    pub(crate) fn new(ctx: &Arc<GpuContext>, median: bool) -> Result<Self> {
        let consts = [("WG_SIZE", WG_SIZE as f64)];
        let entry = if median {
            "row_median_rank"
        } else {
            "row_mean"
        };
        let centre = ctx.pipeline(&REFERENCE, entry, &consts, &LAYOUT)?;
        let subtract = ctx.pipeline(&REFERENCE, "subtract", &consts, &LAYOUT)?;
        let status = ctx.scoped(|| Ok(ctx.storage(16, "neurokernels.reference.status")))?;
        Ok(GpuCar {
            ctx: ctx.clone(),
            centre,
            subtract,
            median,
            input: GrowBuffer::new("neurokernels.reference.input"),
            mid: GrowBuffer::new("neurokernels.reference.mid"),
            output: None,
            params: None,
            status,
        })
    }

    fn output(&mut self, bytes: u64) -> Arc<wgpu::Buffer> {
        let need = bytes.max(16).next_multiple_of(4);
        let reuse = self
            .output
            .as_ref()
            .is_some_and(|b| Arc::strong_count(b) == 1 && b.size() >= need);
        if !reuse {
            self.output = Some(Arc::new(
                self.ctx
                    .storage(need.next_power_of_two(), "neurokernels.reference.output"),
            ));
        }
        match &self.output {
            Some(b) => b.clone(),
            None => Arc::new(self.ctx.storage(need, "neurokernels.reference.output")),
        }
    }

    /// Re-references the `n × nc` chunk in `input` into `output`.
    fn run(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
        read_output: bool,
    ) -> Result<Option<Vec<u8>>> {
        let ctx = self.ctx.clone();
        let limits = ctx.limits();
        let a_s = limits.min_storage_buffer_offset_alignment as u64;
        let a_u = (limits.min_uniform_buffer_offset_alignment as u64).max(64);
        let max_b = ctx.max_binding();
        let row_bytes = nc as u64 * 4;
        let row_step = a_s / gcd(a_s, row_bytes).max(1);
        let rows_per = max_b / row_bytes / row_step * row_step;
        if rows_per == 0 {
            return Err(Error::shape(
                "chunk",
                format!("rows of at most {} channels on this adapter", max_b / 4),
                format!("{nc} channels"),
            ));
        }
        let n64 = n as u64;
        let pieces: Vec<(u64, u64)> = (0..n64.div_ceil(rows_per))
            .map(|k| (k * rows_per, rows_per.min(n64 - k * rows_per)))
            .collect();
        let mid_rows = rows_per.min(n64);
        ctx.scoped(|| {
            let mid = self.mid.ensure(&ctx, mid_rows * 8);
            let pbytes = pieces.len() as u64 * a_u;
            if self.params.as_ref().is_none_or(|(_, s)| *s < pbytes) {
                let size = pbytes.next_power_of_two().max(256);
                let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("neurokernels.reference.params"),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.params = Some((buf, size));
            }
            let mut pdata = vec![0u8; pbytes as usize];
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let d = PieceParams {
                    n_channels: nc as u32,
                    rows: rows as u32,
                    row0: row0 as u32,
                    pad: 0,
                };
                let at = k * a_u as usize;
                pdata[at..at + std::mem::size_of::<PieceParams>()]
                    .copy_from_slice(bytemuck::bytes_of(&d));
            }
            let (pbuf, _) = self
                .params
                .as_ref()
                .ok_or_else(|| Error::Validation("no params buffer".into()))?;
            write_padded(&ctx, pbuf, 0, &pdata);
            let mut groups = Vec::with_capacity(pieces.len());
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let off = row0 * row_bytes;
                let size = (rows * row_bytes).max(4);
                let bg = |p: &wgpu::ComputePipeline| {
                    ctx.bind(
                        p,
                        &[
                            bind(
                                pbuf,
                                k as u64 * a_u,
                                std::mem::size_of::<PieceParams>() as u64,
                            ),
                            bind(input, off, size.min(input.size() - off)),
                            bind(&mid, 0, (rows * 8).max(8)),
                            bind(output, off, size.min(output.size() - off)),
                            self.status.as_entire_binding(),
                        ],
                    )
                };
                groups.push((bg(&self.centre), bg(&self.subtract), rows));
            }
            let mut enc = ctx.encoder();
            enc.clear_buffer(&self.status, 0, None);
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("neurokernels.reference"),
                    timestamp_writes: None,
                });
                for (bc, bs, rows) in &groups {
                    let elems = (*rows * nc as u64).div_ceil(WG_SIZE as u64) as u32;
                    let per_row = (*rows).div_ceil(WG_SIZE as u64) as u32;
                    pass.set_pipeline(&self.centre);
                    pass.set_bind_group(0, bc, &[]);
                    let (x, y, z) = grid(if self.median { elems } else { per_row });
                    pass.dispatch_workgroups(x, y, z);
                    pass.set_pipeline(&self.subtract);
                    pass.set_bind_group(0, bs, &[]);
                    let (x, y, z) = grid(elems);
                    pass.dispatch_workgroups(x, y, z);
                }
            }
            let mut reads: Vec<(&wgpu::Buffer, u64, u64)> = vec![(&self.status, 0, 4)];
            if read_output {
                reads.push((output, 0, n64 * row_bytes));
            }
            let bytes = ctx.submit_and_read(enc, &reads)?;
            let status: u32 = bytemuck::pod_read_unaligned(&bytes[..4]);
            if status != 0 {
                return Err(self.non_finite(input, !status as usize, nc));
            }
            Ok(read_output.then(|| bytes[4..].to_vec()))
        })
    }

    fn non_finite(&self, input: &wgpu::Buffer, row: usize, nc: usize) -> Error {
        let off = row as u64 * nc as u64 * 4;
        let enc = self.ctx.encoder();
        match self
            .ctx
            .submit_and_read(enc, &[(input, off, nc as u64 * 4)])
        {
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

    /// A host chunk (non-empty, checked finite): upload, run, read back.
    pub(crate) fn process_host(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (n, nc) = chunk.dim();
        let data = chunk.as_standard_layout();
        let flat = data
            .as_slice()
            .ok_or_else(|| Error::DeviceArray("chunk not contiguous after copy".into()))?;
        let bytes: &[u8] = bytemuck::cast_slice(flat);
        let ctx = self.ctx.clone();
        let input = ctx.scoped(|| {
            let buf = self.input.ensure(&ctx, bytes.len() as u64);
            write_padded(&ctx, &buf, 0, bytes);
            Ok(buf)
        })?;
        let output = ctx.scoped(|| Ok(self.output(bytes.len() as u64)))?;
        let out = self.run(&input, &output, n, nc, true)?.unwrap_or_default();
        let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&out);
        Array2::from_shape_vec((n, nc), vals).map_err(|e| Error::DeviceArray(e.to_string()))
    }

    /// A device chunk: run, leave the output on the device.
    pub(crate) fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceArray> {
        if !Arc::ptr_eq(chunk.context(), &self.ctx) {
            return Err(Error::DeviceArray(
                "the chunk lives on another GPU context".into(),
            ));
        }
        let shape = chunk.shape().to_vec();
        let (n, nc) = (shape[0], shape[1]);
        let ctx = self.ctx.clone();
        let output = ctx.scoped(|| Ok(self.output((n * nc * 4) as u64)))?;
        if n > 0 {
            let input = chunk.buffer.clone();
            self.run(&input, &output, n, nc, false)?;
        }
        Ok(DeviceArray::from_buffer(&ctx, output, shape, DType::F32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_struct_matches_the_shader() {
        let module = naga::front::wgsl::parse_str(REFERENCE.source).expect("reference.wgsl parses");
        let size = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .map(|(_, t)| t.inner.size(module.to_ctx()))
            .expect("struct Params");
        assert_eq!(size as usize, std::mem::size_of::<PieceParams>());
    }
}
