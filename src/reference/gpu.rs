//! GPU half of the common-average reference around `shaders/reference.wgsl`.
//!
//! Per chunk: one uniform write, one encoder, two dispatches per piece of rows (a single
//! piece unless the chunk passes one binding), one submit and one small read-back (a status
//! word; the output too for host chunks).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{
    align_step, bind, grid, record_pass, reusable_output, row_pieces, rows_per_piece,
    rows_too_wide, Binding, GpuContext, GrowBuffer, ParamsBuffer, SameShapeKernel, TrackedBuffer,
};
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

/// GPU buffers of one [`super::CommonAverage`].
pub(crate) struct GpuCar {
    ctx: Arc<GpuContext>,
    centre: wgpu::ComputePipeline,
    subtract: wgpu::ComputePipeline,
    median: bool,
    input: GrowBuffer,
    mid: GrowBuffer,
    output: Option<Arc<TrackedBuffer>>,
    params: ParamsBuffer,
    status: TrackedBuffer,
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
        let status = ctx.scoped(|| ctx.storage(16, "neurokernels.reference.status"))?;
        Ok(GpuCar {
            ctx: ctx.clone(),
            centre,
            subtract,
            median,
            input: GrowBuffer::new("neurokernels.reference.input"),
            mid: GrowBuffer::new("neurokernels.reference.mid"),
            output: None,
            params: ParamsBuffer::new("neurokernels.reference.params"),
            status,
        })
    }
}

impl SameShapeKernel for GpuCar {
    fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    fn input_buffer(&mut self) -> &mut GrowBuffer {
        &mut self.input
    }

    fn output_buffer(&mut self, bytes: u64) -> Result<Arc<TrackedBuffer>> {
        reusable_output(
            &self.ctx,
            &mut self.output,
            bytes,
            "neurokernels.reference.output",
        )
    }

    fn status(&self) -> &wgpu::Buffer {
        &self.status
    }

    /// No state: nothing to commit.
    fn commit(&mut self, _token: usize) {}

    /// Records the re-reference of the `n × nc` chunk in `input` into `output`.
    fn record(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
    ) -> Result<(wgpu::CommandEncoder, usize)> {
        let ctx = self.ctx.clone();
        let a_s = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let max_b = ctx.max_binding();
        let row_bytes = nc as u64 * 4;
        let row_step = align_step(a_s, row_bytes);
        let rows_per = rows_per_piece(max_b, row_bytes, row_step, u64::MAX);
        if rows_per == 0 {
            return Err(rows_too_wide(max_b, nc));
        }
        let n64 = n as u64;
        let pieces = row_pieces(n64, rows_per);
        let mid_rows = rows_per.min(n64);
        ctx.scoped(|| {
            let mid = self.mid.ensure(&ctx, mid_rows * 8)?;
            let params: Vec<PieceParams> = pieces
                .iter()
                .map(|&(row0, rows)| PieceParams {
                    n_channels: nc as u32,
                    rows: rows as u32,
                    row0: row0 as u32,
                    pad: 0,
                })
                .collect();
            let params = self.params.write(&ctx, &params)?;
            let mut groups = Vec::with_capacity(pieces.len());
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let off = row0 * row_bytes;
                let size = (rows * row_bytes).max(4);
                let bg = |p: &wgpu::ComputePipeline| {
                    ctx.bind(
                        p,
                        &[
                            params.binding(k),
                            bind(input, off, size.min(input.size() - off)),
                            bind(&mid, 0, (rows * 8).max(8)),
                            bind(output, off, size.min(output.size() - off)),
                            self.status.as_entire_binding(),
                        ],
                    )
                };
                groups.push((bg(&self.centre), bg(&self.subtract), rows));
            }
            let record = |pass: &mut wgpu::ComputePass<'_>| {
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
            };
            Ok((
                record_pass(&ctx, &self.status, "neurokernels.reference", record),
                0,
            ))
        })
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
