//! GPU half of the filter: buffers, dispatch and read-back around `shaders/filter.wgsl`
//! (entry `sosfilt`), built with its `f64` arithmetic where the context uses `f64` kernels,
//! else with double-single `f32`.
//!
//! Per chunk: one uniform write, one encoder, one dispatch per piece of at most 16 384 rows
//! (the loop bound of software adapters; a single piece for chunks up to 0.5 s at 30 kHz),
//! one submit and one small read-back (a status word; the output too for host chunks). The
//! pipeline is specialised on the section count (override `NS`). The section state lives in three buffers:
//! the committed one is only read; a chunk writes another (pieces of a split chunk alternate
//! between the two others), and the committed index moves only once the chunk is accepted.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::cpu::Coeffs;
use crate::error::{Error, Result};
use crate::gpu::{
    align_step, bind, grid, record_pass, reusable_output, row_pieces, rows_per_piece,
    rows_too_wide, write_padded, Binding, GpuContext, GrowBuffer, ParamsBuffer, SameShapeKernel,
    TrackedBuffer,
};
use crate::shaders::{FILTER, FILTER_F64};

/// Invocations per workgroup (one per channel).
const WG_SIZE: u32 = 64;

/// Group 0 of `sosfilt`: params, coeffs, samples, state in, state out, output, status.
const LAYOUT: [Binding; 7] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Bytes of one (section, channel) state: `vec4<f32>` (double-single) or `vec2<f64>`.
const STATE_BYTES: u64 = 16;

/// Most rows one dispatch walks: the kernel's only loop runs once per row (the sections are
/// spelled out, not looped), so this is also the most loop iterations any invocation runs,
/// 4× below the 65 535 after which llvmpipe silently ends an invocation.
const MAX_ROWS_PER_DISPATCH: u64 = 16_384;

/// The shader's `Params` (one per dispatch).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct DispatchParams {
    n_channels: u32,
    rows: u32,
    row0: u32,
    n_sections: u32,
    one: f32,
    pad: [u32; 3],
}

/// GPU streaming state of one [`super::BandpassFilter`].
pub(crate) struct GpuFilter {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    /// Native `f64` arithmetic (`shaders/filter_f64.wgsl`) rather than double-single.
    f64: bool,
    n_sections: usize,
    coeffs: TrackedBuffer,
    /// State buffers; `states[committed]` is the accepted state.
    states: Vec<TrackedBuffer>,
    committed: usize,
    /// Channel count the state was initialised for.
    init_for: Option<usize>,
    /// Upload buffer for host chunks.
    input: GrowBuffer,
    /// Output buffer, reused while no [`DeviceArray`] still holds it.
    output: Option<Arc<TrackedBuffer>>,
    /// Uniform buffer of the dispatches' params.
    params: ParamsBuffer,
    /// One status word.
    status: TrackedBuffer,
    /// Test knob: cap on the rows of one dispatch.
    rows_limit: Option<usize>,
}

impl std::fmt::Debug for GpuFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFilter")
            .field("ctx", &self.ctx)
            .field("n_sections", &self.n_sections)
            .field("committed", &self.committed)
            .field("init_for", &self.init_for)
            .finish()
    }
}

/// `c` as the shader's coefficient: an unevaluated pair of `f32` (`hi = round(c)`,
/// `lo = round(c − hi)`), then `hi`'s Veltkamp halves (12 significant bits each).
fn split(c: f64) -> [f32; 4] {
    let hi = c as f32;
    let t = 4097.0 * hi;
    let h = t - (t - hi);
    [hi, (c - hi as f64) as f32, h, hi - h]
}

impl GpuFilter {
    /// Drops the upload and output buffers, sized for the largest chunk so far.
    pub(crate) fn release_scratch(&mut self) {
        self.input.release();
        self.output = None;
    }

    /// The committed state copy and the channel count it was set up for.
    pub(crate) fn mark(&self) -> (usize, Option<usize>) {
        (self.committed, self.init_for)
    }

    /// Back to what [`GpuFilter::mark`] returned (before the chunk since).
    pub(crate) fn rewind(&mut self, (committed, init_for): (usize, Option<usize>)) {
        self.committed = committed;
        self.init_for = init_for;
    }

    pub(crate) fn new(ctx: &Arc<GpuContext>, sos: &[Coeffs]) -> Result<Self> {
        let f64 = ctx.uses_f64_kernels();
        let pipeline = ctx.pipeline(
            if f64 { &FILTER_F64 } else { &FILTER },
            "sosfilt",
            &[("WG_SIZE", WG_SIZE as f64), ("NS", sos.len() as f64)],
            &LAYOUT,
        )?;
        let coeff_bytes: Vec<u8> = if f64 {
            bytemuck::cast_slice(&sos.iter().flatten().copied().collect::<Vec<f64>>()).to_vec()
        } else {
            let pairs: Vec<[f32; 4]> = sos.iter().flat_map(|s| s.map(split)).collect();
            bytemuck::cast_slice(&pairs).to_vec()
        };
        let (coeffs, status) = ctx.scoped(|| {
            let coeffs = ctx.storage(coeff_bytes.len() as u64, "neurokernels.filter.coeffs")?;
            write_padded(ctx, &coeffs, 0, &coeff_bytes);
            let status = ctx.storage(16, "neurokernels.filter.status")?;
            Ok((coeffs, status))
        })?;
        Ok(GpuFilter {
            ctx: ctx.clone(),
            pipeline,
            f64,
            n_sections: sos.len(),
            coeffs,
            states: Vec::new(),
            committed: 0,
            init_for: None,
            input: GrowBuffer::new("neurokernels.filter.input"),
            output: None,
            params: ParamsBuffer::new("neurokernels.filter.params"),
            status,
            rows_limit: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.init_for = None;
    }

    /// The committed state of `nc` channels, read back as `(z₁ hi, z₁ lo, z₂ hi, z₂ lo)` per
    /// (section, channel), section-major (zeros when the state is not sized for `nc`): the
    /// double-single pairs as they are, or the `f64` values with `lo = −0`.
    pub(crate) fn read_state(&self, nc: usize) -> Result<Vec<f64>> {
        let n = self.n_sections * nc * 4;
        if self.init_for != Some(nc) {
            return Ok(vec![0.0; n]);
        }
        let ctx = &self.ctx;
        let bytes = ctx.scoped(|| {
            ctx.submit_and_read(
                ctx.encoder(),
                &[(&self.states[self.committed], 0, n as u64 * 4)],
            )
        })?;
        Ok(if self.f64 {
            let z: Vec<f64> = bytemuck::pod_collect_to_vec(&bytes);
            z.into_iter().flat_map(|v| [v, -0.0]).collect()
        } else {
            let ds: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
            ds.into_iter().map(f64::from).collect()
        })
    }

    /// Makes `pairs` (the layout of [`GpuFilter::read_state`], finite, checked by the caller)
    /// the committed state for `nc` channels: each value `hi + lo`, rounded to a pair of
    /// `f32` for the double-single arithmetic. Checks the size against the adapter and the
    /// values against `f32`'s range before changing anything.
    pub(crate) fn write_state(&mut self, nc: usize, pairs: &[f64]) -> Result<()> {
        let bytes: Vec<u8> = if self.f64 {
            let z: Vec<f64> = pairs.chunks_exact(2).map(|p| p[0] + p[1]).collect();
            bytemuck::cast_slice(&z).to_vec()
        } else {
            let mut ds = Vec::with_capacity(pairs.len());
            for p in pairs.chunks_exact(2) {
                let Some(hl) = crate::state::f32_pair(p[0], p[1]) else {
                    return Err(Error::State(format!(
                        "filter state value {} does not fit the GPU's f32 pairs",
                        p[0] + p[1]
                    )));
                };
                ds.extend(hl);
            }
            bytemuck::cast_slice(&ds).to_vec()
        };
        self.init(nc)?;
        write_padded(&self.ctx, &self.states[self.committed], 0, &bytes);
        Ok(())
    }

    pub(crate) fn set_rows_limit(&mut self, rows: Option<usize>) {
        self.rows_limit = rows;
    }

    /// (Re)creates the state buffers for `nc` channels and queues a zero state into the
    /// committed one. Queued writes run before the chunk's commands.
    fn init(&mut self, nc: usize) -> Result<()> {
        let ctx = self.ctx.clone();
        let bytes = (self.n_sections * nc) as u64 * STATE_BYTES;
        if bytes > ctx.max_binding() {
            return Err(Error::shape(
                "chunk",
                format!(
                    "at most {} channels for {} sections on this adapter",
                    ctx.max_binding() / STATE_BYTES / self.n_sections as u64,
                    self.n_sections
                ),
                format!("{nc} channels"),
            ));
        }
        ctx.scoped(|| {
            if self.states.len() != 3 || self.states[0].size() < bytes.max(16) {
                self.states = (0..3)
                    .map(|_| ctx.storage(bytes, "neurokernels.filter.state"))
                    .collect::<Result<_>>()?;
            }
            self.committed = 0;
            let zeros = vec![0u8; bytes as usize];
            write_padded(&ctx, &self.states[0], 0, &zeros);
            Ok(())
        })?;
        self.init_for = Some(nc);
        Ok(())
    }
}

impl SameShapeKernel for GpuFilter {
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
            "neurokernels.filter.output",
        )
    }

    fn status(&self) -> &wgpu::Buffer {
        &self.status
    }

    fn commit(&mut self, token: usize) {
        self.committed = token;
    }

    /// Records the filter of the `n × nc` chunk in `input` into `output` from the committed
    /// state; the token is the state copy the commands leave the new state in.
    fn record(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
    ) -> Result<(wgpu::CommandEncoder, usize)> {
        if self.init_for != Some(nc) {
            self.init(nc)?;
        }
        let ctx = self.ctx.clone();
        let a_s = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let max_b = ctx.max_binding();
        let row_bytes = nc as u64 * 4;
        let row_step = align_step(a_s, row_bytes);
        let by_loop = MAX_ROWS_PER_DISPATCH.min(self.rows_limit.map_or(u64::MAX, |r| r as u64));
        let rows_per = rows_per_piece(max_b, row_bytes, row_step, by_loop);
        if rows_per == 0 {
            return Err(rows_too_wide(max_b, nc));
        }
        let n64 = n as u64;
        let pieces = row_pieces(n64, rows_per);

        ctx.scoped(|| {
            let params: Vec<DispatchParams> = pieces
                .iter()
                .map(|&(row0, rows)| DispatchParams {
                    n_channels: nc as u32,
                    rows: rows as u32,
                    row0: row0 as u32,
                    n_sections: self.n_sections as u32,
                    one: 1.0,
                    pad: [0; 3],
                })
                .collect();
            let params = self.params.write(&ctx, &params)?;

            let scratch = [(self.committed + 1) % 3, (self.committed + 2) % 3];
            let mut state_in = self.committed;
            let mut state_out = scratch[0];
            let mut groups = Vec::with_capacity(pieces.len());
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                if k > 0 {
                    state_in = state_out;
                    state_out = if state_out == scratch[0] {
                        scratch[1]
                    } else {
                        scratch[0]
                    };
                }
                let off = row0 * row_bytes;
                let in_size = (rows * row_bytes).max(4).min(input.size() - off);
                let out_size = (rows * row_bytes).max(4).min(output.size() - off);
                let bg = ctx.bind(
                    &self.pipeline,
                    &[
                        params.binding(k),
                        self.coeffs.as_entire_binding(),
                        bind(input, off, in_size),
                        self.states[state_in].as_entire_binding(),
                        self.states[state_out].as_entire_binding(),
                        bind(output, off, out_size),
                        self.status.as_entire_binding(),
                    ],
                );
                groups.push(bg);
            }
            let record = |pass: &mut wgpu::ComputePass<'_>| {
                pass.set_pipeline(&self.pipeline);
                let (x, y, z) = grid((nc as u32).div_ceil(WG_SIZE));
                for bg in &groups {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(x, y, z);
                }
            };
            let enc = record_pass(&ctx, &self.status, "neurokernels.filter.sosfilt", record);
            Ok((enc, state_out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host struct has the shader's layout.
    #[test]
    fn host_struct_matches_the_shader() {
        let module = naga::front::wgsl::parse_str(FILTER.source).expect("filter.wgsl parses");
        let size = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .map(|(_, t)| t.inner.size(module.to_ctx()))
            .expect("struct Params");
        assert_eq!(size as usize, std::mem::size_of::<DispatchParams>());
    }

    #[test]
    fn split_is_exact_to_f32_squared() {
        let c = std::f64::consts::PI;
        let [hi, lo, h, l] = split(c);
        assert!((hi as f64 + lo as f64 - c).abs() < 1e-14);
        assert_eq!(h + l, hi);
        assert_eq!((h as f64) * (h as f64), (h * h) as f64);
    }
}
