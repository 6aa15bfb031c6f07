//! The GPU half of binned kernel activation: buffers, state kept on the device between chunks
//! (double-buffered: read from one copy, write the other, swap when the chunk is accepted),
//! and the dispatches of `shaders/binning.wgsl`.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::{Aggregation, Buckets, DenseSample, JumpTable, Params, Plan};
use crate::error::{Error, Result};
use crate::events::DeviceEvents;
use crate::gpu::{grid, write_padded, Binding, DType, DeviceArray, GpuContext, GrowBuffer};
use crate::shaders::BINNING;

/// Group 0 of `binning.wgsl`, binding by binding.
const LAYOUT: [Binding; 13] = [
    Binding::Uniform,
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Threads per workgroup in `binning.wgsl`.
const WG: u32 = 64;
/// Finite "no sample yet" sentinel for the partial max (matches `NO_MAX` in the shader).
const NO_MAX: f32 = -f32::MAX;

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuParams {
    n_ch: u32,
    n_seg: u32,
    n_samples: u32,
    kind: u32,
    agg: u32,
    scale: u32,
    input_u8: u32,
    cap: u32,
    wscale: f32,
    inv_tau: f32,
    d_hi: f32,
    d_lo: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuSeg {
    start: u32,
    end: u32,
    row: i32,
    cont: u32,
    out_scale: f32,
    pad: [u32; 3],
}

/// Device buffers and pipelines of one binning stream.
#[derive(Debug)]
pub(crate) struct GpuBinning {
    ctx: Arc<GpuContext>,
    params: wgpu::Buffer,
    jumps: wgpu::Buffer,
    base: GpuParams,
    segs: GrowBuffer,
    input: GrowBuffer,
    counts: GrowBuffer,
    state: [GrowBuffer; 2],
    cum: [GrowBuffer; 2],
    /// Which of the two state copies is current.
    cur: usize,
    /// Whether the state copies hold this stream's state (else they are zeroed on next use).
    initialized: bool,
    summ: GrowBuffer,
    summ_n: GrowBuffer,
    flags: GrowBuffer,
    /// Host output buffer (reused), and the last device output (reused when its caller let go).
    out: GrowBuffer,
    dev_out: Option<Arc<wgpu::Buffer>>,
    pipe_local: wgpu::ComputePipeline,
    pipe_finish: wgpu::ComputePipeline,
    pipe_sparse: wgpu::ComputePipeline,
}

fn uniform(ctx: &GpuContext, bytes: &[u8], label: &str) -> wgpu::Buffer {
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(&buf, 0, bytes);
    buf
}

impl GpuBinning {
    pub fn new(ctx: &Arc<GpuContext>, p: &Params, jt: &JumpTable) -> Result<Self> {
        let d_hi = jt.d as f32;
        let base = GpuParams {
            n_ch: 0,
            n_seg: 0,
            n_samples: 0,
            kind: p.kind,
            agg: match p.agg {
                Aggregation::Last => 0,
                Aggregation::Mean => 1,
                Aggregation::Sum => 2,
                Aggregation::Max => 3,
            },
            scale: p.scale_by_value as u32,
            input_u8: 0,
            cap: 0,
            wscale: p.wscale as f32,
            inv_tau: jt.inv_tau as f32,
            d_hi,
            d_lo: (jt.d - d_hi as f64) as f32,
        };
        ctx.scoped(|| {
            Ok(GpuBinning {
                ctx: ctx.clone(),
                params: uniform(ctx, bytemuck::bytes_of(&base), "binning-params"),
                jumps: uniform(ctx, bytemuck::cast_slice(&jt.gpu_rows()), "binning-jumps"),
                base,
                segs: GrowBuffer::new("binning-segs"),
                input: GrowBuffer::new("binning-input"),
                counts: GrowBuffer::new("binning-counts"),
                state: [
                    GrowBuffer::new("binning-state-a"),
                    GrowBuffer::new("binning-state-b"),
                ],
                cum: [
                    GrowBuffer::new("binning-cum-a"),
                    GrowBuffer::new("binning-cum-b"),
                ],
                cur: 0,
                initialized: false,
                summ: GrowBuffer::new("binning-summ"),
                summ_n: GrowBuffer::new("binning-summ-n"),
                flags: GrowBuffer::new("binning-flags"),
                out: GrowBuffer::new("binning-out"),
                dev_out: None,
                pipe_local: ctx.pipeline(&BINNING, "dense_local", &[], &LAYOUT)?,
                pipe_finish: ctx.pipeline(&BINNING, "dense_finish", &[], &LAYOUT)?,
                pipe_sparse: ctx.pipeline(&BINNING, "sparse", &[], &LAYOUT)?,
            })
        })
    }

    /// Forgets the stream: the state is zeroed before the next chunk.
    pub fn reset(&mut self) {
        self.initialized = false;
    }

    /// Largest number of rows of `nc` channels one dense dispatch can bind.
    pub fn max_rows(&self, nc: usize, byte_input: bool) -> usize {
        let per_row = if byte_input { nc } else { nc * 4 };
        ((self.ctx.max_binding() as usize) / per_row.max(1)).clamp(1, u32::MAX as usize / nc.max(1))
    }

    /// Makes sure the state buffers exist for `nc` channels and hold this stream's state.
    fn prepare_state(&mut self, nc: usize) {
        let ctx = &self.ctx;
        for k in 0..2 {
            self.state[k].ensure(ctx, 16 * nc as u64);
            self.cum[k].ensure(ctx, 8 * nc as u64);
        }
        if !self.initialized {
            let st: Vec<[f32; 4]> = vec![[0.0, 0.0, 0.0, NO_MAX]; nc];
            let cum = vec![0u32; 2 * nc];
            let (s, c) = (
                self.state[self.cur].ensure(ctx, 0),
                self.cum[self.cur].ensure(ctx, 0),
            );
            ctx.queue.write_buffer(&s, 0, bytemuck::cast_slice(&st));
            ctx.queue.write_buffer(&c, 0, bytemuck::cast_slice(&cum));
            self.initialized = true;
        }
    }

    /// Uploads the segment table and parameters of a chunk.
    fn upload_plan(&mut self, plan: &Plan, nc: usize, n: usize, input_u8: bool, cap: u32) {
        let segs: Vec<GpuSeg> = plan
            .segments
            .iter()
            .map(|s| GpuSeg {
                start: s.start as u32,
                end: s.end as u32,
                row: s.row.map_or(-1, |r| r as i32),
                cont: s.continues as u32,
                out_scale: s.out_scale as f32,
                pad: [0; 3],
            })
            .collect();
        let buf = self.segs.ensure(&self.ctx, (segs.len() * 32) as u64);
        self.ctx
            .queue
            .write_buffer(&buf, 0, bytemuck::cast_slice(&segs));
        let p = GpuParams {
            n_ch: nc as u32,
            n_seg: segs.len() as u32,
            n_samples: n as u32,
            input_u8: input_u8 as u32,
            cap,
            ..self.base
        };
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        let flags = self.flags.ensure(&self.ctx, 16);
        self.ctx.queue.write_buffer(&flags, 0, &[0u8; 16]);
    }

    /// The output buffer for a device result: the previous one if its caller let go of it.
    fn device_out(&mut self, bytes: u64) -> Arc<wgpu::Buffer> {
        if let Some(b) = self.dev_out.take() {
            if Arc::strong_count(&b) == 1 && b.size() >= bytes.max(16) {
                self.dev_out = Some(b.clone());
                return b;
            }
        }
        let b = Arc::new(
            self.ctx
                .storage(bytes.max(16).next_power_of_two(), "binning-out"),
        );
        self.dev_out = Some(b.clone());
        b
    }

    /// Records the chunk's dispatches into an encoder.
    fn record(
        &mut self,
        plan: &Plan,
        nc: usize,
        sparse: bool,
        input: &wgpu::Buffer,
        counts: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
    ) -> wgpu::CommandEncoder {
        let ctx = &self.ctx;
        let n_seg = plan.segments.len();
        let summ = self.summ.ensure(ctx, (16 * n_seg * nc) as u64);
        let summ_n = self.summ_n.ensure(ctx, (4 * n_seg * nc) as u64);
        let counts = match counts {
            Some(c) => c.clone(),
            None => self.counts.ensure(ctx, 16),
        };
        let (cur, next) = (self.cur, 1 - self.cur);
        let bufs = [
            self.segs.ensure(ctx, 0),
            self.state[cur].ensure(ctx, 0),
            self.cum[cur].ensure(ctx, 0),
            self.state[next].ensure(ctx, 0),
            self.cum[next].ensure(ctx, 0),
            self.flags.ensure(ctx, 16),
        ];
        let resources = [
            self.params.as_entire_binding(),
            self.jumps.as_entire_binding(),
            bufs[0].as_entire_binding(),
            input.as_entire_binding(),
            counts.as_entire_binding(),
            bufs[1].as_entire_binding(),
            bufs[2].as_entire_binding(),
            bufs[3].as_entire_binding(),
            bufs[4].as_entire_binding(),
            out.as_entire_binding(),
            summ.as_entire_binding(),
            summ_n.as_entire_binding(),
            bufs[5].as_entire_binding(),
        ];
        let mut enc = ctx.encoder();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            let mut run = |pipe: &wgpu::ComputePipeline, threads: usize| {
                let bg = ctx.bind(pipe, &resources);
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, &bg, &[]);
                let (x, y, z) = grid((threads as u32).div_ceil(WG));
                pass.dispatch_workgroups(x, y, z);
            };
            if sparse {
                run(&self.pipe_sparse, nc);
            } else {
                let needs_local = n_seg > 1 && (self.base.kind != 0 || self.base.agg == 0);
                if needs_local {
                    run(&self.pipe_local, n_seg * nc);
                }
                run(&self.pipe_finish, n_seg * nc);
            }
        }
        enc
    }

    /// Packs a host dense chunk into the input buffer.
    fn upload_dense<T: DenseSample>(&mut self, chunk: ArrayView2<'_, T>) {
        let std = chunk.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        if T::IS_BYTE {
            let bytes: Vec<u8> = data.iter().map(|x| x.to_u8()).collect();
            let buf = self.input.ensure(&self.ctx, bytes.len() as u64);
            write_padded(&self.ctx, &buf, 0, &bytes);
        } else {
            let buf = self.input.ensure(&self.ctx, (data.len() * 4) as u64);
            match T::as_f32(data) {
                Some(words) => write_padded(&self.ctx, &buf, 0, bytemuck::cast_slice(words)),
                None => {
                    let words: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
                    write_padded(&self.ctx, &buf, 0, bytemuck::cast_slice(&words));
                }
            }
        }
    }

    pub fn dense_host<T: DenseSample>(
        &mut self,
        p: &Params,
        plan: &Plan,
        chunk: ArrayView2<'_, T>,
    ) -> Result<Array2<f32>> {
        let (n, nc) = chunk.dim();
        let _ = p;
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let bytes = ctx.scoped(|| {
            self.prepare_state(nc);
            self.upload_dense(chunk);
            self.upload_plan(plan, nc, n, T::IS_BYTE, 0);
            let out = self.out.ensure(&ctx, out_bytes);
            let input = self.input.ensure(&ctx, 0);
            let enc = self.record(plan, nc, false, &input, None, &out);
            ctx.submit_and_read(enc, &[(&out, 0, out_bytes)])
        })?;
        self.cur = 1 - self.cur;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Array2::from_shape_vec((plan.n_bins, nc), v).map_err(|e| Error::Readback(e.to_string()))
    }

    pub fn dense_device(
        &mut self,
        p: &Params,
        plan: &Plan,
        chunk: &DeviceArray,
    ) -> Result<DeviceArray> {
        let _ = p;
        if !Arc::ptr_eq(chunk.context(), &self.ctx) {
            return Err(Error::DeviceArray("chunk lives on another device".into()));
        }
        let byte_input = match chunk.dtype() {
            DType::F32 => false,
            DType::U8 => true,
            DType::U32 => return Err(Error::DeviceArray("dense input must be f32 or u8".into())),
        };
        let (n, nc) = (chunk.shape()[0], chunk.shape()[1]);
        if n > self.max_rows(nc, byte_input) {
            return Err(Error::DeviceArray(format!(
                "a device chunk of {n} rows × {nc} channels exceeds one binding; split it"
            )));
        }
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let out = ctx.scoped(|| {
            self.prepare_state(nc);
            self.upload_plan(plan, nc, n, byte_input, 0);
            let out = self.device_out(out_bytes);
            let enc = self.record(plan, nc, false, &chunk.buffer, None, &out);
            ctx.submit_and_read(enc, &[])?;
            Ok(out)
        })?;
        self.cur = 1 - self.cur;
        Ok(DeviceArray::from_buffer(
            &self.ctx,
            out,
            vec![plan.n_bins, nc],
            DType::F32,
        ))
    }

    pub fn sparse_host(
        &mut self,
        p: &Params,
        plan: &Plan,
        b: &Buckets,
        nc: usize,
    ) -> Result<Array2<f32>> {
        let _ = p;
        let cap = (0..nc)
            .map(|c| b.offsets[c + 1] - b.offsets[c])
            .max()
            .unwrap_or(0)
            .max(1);
        let mut slots = vec![0u32; nc * cap * 2];
        let mut counts = vec![0u32; nc];
        for c in 0..nc {
            for (k, i) in (b.offsets[c]..b.offsets[c + 1]).enumerate() {
                slots[2 * (c * cap + k)] = b.rel[i];
                slots[2 * (c * cap + k) + 1] = b.value[i].to_bits();
            }
            counts[c] = (b.offsets[c + 1] - b.offsets[c]) as u32;
        }
        let n = plan.segments.last().map_or(0, |s| s.end) as usize;
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let bytes = ctx.scoped(|| {
            self.prepare_state(nc);
            let input = self.input.ensure(&ctx, (slots.len() * 4) as u64);
            ctx.queue
                .write_buffer(&input, 0, bytemuck::cast_slice(&slots));
            let cbuf = self.counts.ensure(&ctx, (nc * 4) as u64);
            ctx.queue
                .write_buffer(&cbuf, 0, bytemuck::cast_slice(&counts));
            self.upload_plan(plan, nc, n, false, cap as u32);
            let out = self.out.ensure(&ctx, out_bytes);
            let enc = self.record(plan, nc, true, &input, Some(&cbuf), &out);
            ctx.submit_and_read(enc, &[(&out, 0, out_bytes)])
        })?;
        self.cur = 1 - self.cur;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Array2::from_shape_vec((plan.n_bins, nc), v).map_err(|e| Error::Readback(e.to_string()))
    }

    pub fn sparse_device(
        &mut self,
        p: &Params,
        plan: &Plan,
        ev: &DeviceEvents,
    ) -> Result<DeviceArray> {
        let _ = p;
        let nc = ev.n_channels;
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let (out, flags) = ctx.scoped(|| {
            self.prepare_state(nc);
            self.upload_plan(plan, nc, ev.n_samples, false, ev.capacity);
            let out = self.device_out(out_bytes);
            let enc = self.record(plan, nc, true, &ev.slots, Some(&ev.counts), &out);
            let flags_buf = self.flags.ensure(&ctx, 16);
            let flags = ctx.submit_and_read(enc, &[(&flags_buf, 0, 4)])?;
            Ok((out, flags))
        })?;
        let bad = u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]);
        if bad > 0 {
            return Err(Error::IndexOutOfRange {
                what: "device event sample outside its chunk (or past the slot capacity)",
                index: bad as u64,
                bound: ev.n_samples as u64,
            });
        }
        self.cur = 1 - self.cur;
        Ok(DeviceArray::from_buffer(
            &self.ctx,
            out,
            vec![plan.n_bins, nc],
            DType::F32,
        ))
    }
}
