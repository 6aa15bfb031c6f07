//! GPU half of the filter: buffers, dispatch and read-back around `shaders/filter.wgsl`
//! (entry `sosfilt`).
//!
//! Per chunk: one uniform write, one encoder, one dispatch per piece of at most 16 384 rows
//! (the loop bound of software adapters; a single piece for chunks up to 0.5 s at 30 kHz),
//! one submit and one small read-back (a status word; the output too for host chunks). The
//! pipeline is specialised on the section count (override `NS`). The section state lives in three buffers:
//! the committed one is only read; a chunk writes another (pieces of a split chunk alternate
//! between the two others), and the committed index moves only once the chunk is accepted.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::cpu::Coeffs;
use crate::error::{Error, Result};
use crate::gpu::{grid, write_padded, Binding, DType, DeviceArray, GpuContext, GrowBuffer};
use crate::shaders::FILTER;

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

/// Bytes of one (section, channel) state: `vec4<f32>`.
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
    n_sections: usize,
    coeffs: wgpu::Buffer,
    /// State buffers; `states[committed]` is the accepted state.
    states: Vec<wgpu::Buffer>,
    committed: usize,
    /// Channel count the state was initialised for.
    init_for: Option<usize>,
    /// Upload buffer for host chunks.
    input: GrowBuffer,
    /// Output buffer, reused while no [`DeviceArray`] still holds it.
    output: Option<Arc<wgpu::Buffer>>,
    /// Uniform buffer of the dispatches' params, and its size.
    params: Option<(wgpu::Buffer, u64)>,
    /// One status word.
    status: wgpu::Buffer,
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

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A binding of `size` bytes of `buffer` from `offset`.
fn bind(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
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
    pub(crate) fn new(ctx: &Arc<GpuContext>, sos: &[Coeffs]) -> Result<Self> {
        let pipeline = ctx.pipeline(
            &FILTER,
            "sosfilt",
            &[("WG_SIZE", WG_SIZE as f64), ("NS", sos.len() as f64)],
            &LAYOUT,
        )?;
        let pairs: Vec<[f32; 4]> = sos.iter().flat_map(|s| s.map(split)).collect();
        let (coeffs, status) = ctx.scoped(|| {
            let coeffs = ctx.storage(pairs.len() as u64 * 16, "neurokernels.filter.coeffs");
            write_padded(ctx, &coeffs, 0, bytemuck::cast_slice(&pairs));
            let status = ctx.storage(16, "neurokernels.filter.status");
            Ok((coeffs, status))
        })?;
        Ok(GpuFilter {
            ctx: ctx.clone(),
            pipeline,
            n_sections: sos.len(),
            coeffs,
            states: Vec::new(),
            committed: 0,
            init_for: None,
            input: GrowBuffer::new("neurokernels.filter.input"),
            output: None,
            params: None,
            status,
            rows_limit: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.init_for = None;
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
                    .collect();
            }
            self.committed = 0;
            let zeros = vec![0u8; bytes as usize];
            write_padded(&ctx, &self.states[0], 0, &zeros);
            Ok(())
        })?;
        self.init_for = Some(nc);
        Ok(())
    }

    /// The output buffer for `bytes`, reused when nobody else holds it.
    fn output(&mut self, bytes: u64) -> Arc<wgpu::Buffer> {
        let need = bytes.max(16).next_multiple_of(4);
        let reuse = self
            .output
            .as_ref()
            .is_some_and(|b| Arc::strong_count(b) == 1 && b.size() >= need);
        if !reuse {
            self.output = Some(Arc::new(
                self.ctx
                    .storage(need.next_power_of_two(), "neurokernels.filter.output"),
            ));
        }
        match &self.output {
            Some(b) => b.clone(),
            None => Arc::new(self.ctx.storage(need, "neurokernels.filter.output")),
        }
    }

    /// Filters the `n × nc` chunk in `input` into `output` from the committed state, then
    /// commits. With `read_output`, the output's bytes come back too.
    fn run(
        &mut self,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        n: usize,
        nc: usize,
        read_output: bool,
    ) -> Result<Option<Vec<u8>>> {
        if self.init_for != Some(nc) {
            self.init(nc)?;
        }
        let ctx = self.ctx.clone();
        let limits = ctx.limits();
        let a_s = limits.min_storage_buffer_offset_alignment as u64;
        let a_u = (limits.min_uniform_buffer_offset_alignment as u64).max(64);
        let max_b = ctx.max_binding();
        let row_bytes = nc as u64 * 4;
        let row_step = a_s / gcd(a_s, row_bytes).max(1);
        let by_binding = max_b / row_bytes / row_step * row_step;
        let by_loop = MAX_ROWS_PER_DISPATCH.min(self.rows_limit.map_or(u64::MAX, |r| r as u64));
        let rows_per = by_binding.min((by_loop / row_step * row_step).max(row_step));
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

        ctx.scoped(|| {
            let pbytes = pieces.len() as u64 * a_u;
            if self.params.as_ref().is_none_or(|(_, s)| *s < pbytes) {
                let size = pbytes.next_power_of_two().max(256);
                let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("neurokernels.filter.params"),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.params = Some((buf, size));
            }
            let mut pdata = vec![0u8; pbytes as usize];
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let d = DispatchParams {
                    n_channels: nc as u32,
                    rows: rows as u32,
                    row0: row0 as u32,
                    n_sections: self.n_sections as u32,
                    one: 1.0,
                    pad: [0; 3],
                };
                let at = k * a_u as usize;
                pdata[at..at + std::mem::size_of::<DispatchParams>()]
                    .copy_from_slice(bytemuck::bytes_of(&d));
            }
            let (pbuf, _) = self
                .params
                .as_ref()
                .ok_or_else(|| Error::Validation("no params buffer".into()))?;
            write_padded(&ctx, pbuf, 0, &pdata);

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
                        bind(
                            pbuf,
                            k as u64 * a_u,
                            std::mem::size_of::<DispatchParams>() as u64,
                        ),
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
            let mut enc = ctx.encoder();
            enc.clear_buffer(&self.status, 0, None);
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("neurokernels.filter.sosfilt"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipeline);
                let (x, y, z) = grid((nc as u32).div_ceil(WG_SIZE));
                for bg in &groups {
                    pass.set_bind_group(0, bg, &[]);
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
            self.committed = state_out;
            Ok(read_output.then(|| bytes[4..].to_vec()))
        })
    }

    /// The error for the first non-finite sample of row `row` (found by the device).
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

    /// A host chunk (non-empty, checked finite): upload, run, read the output back.
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
