//! The GPU half of binned kernel activation: buffers, state kept on the device between chunks,
//! and the dispatches of `shaders/binning.wgsl`.
//!
//! A chunk's segments are cut into *windows* (one dispatch each, two for dense input with
//! carried recurrences), run in order in one submission; each window reads the state the
//! previous one wrote. Windows bound the work of every invocation: at most
//! [`MAX_WINDOW_SEGS`] segments and [`MAX_SPAN`] samples (a longer bin is cut into pieces),
//! so no invocation runs more than about 20 000 loop iterations — some drivers (Mesa's
//! llvmpipe) silently stop an invocation after 65 535. The state lives in a ring of three
//! buffers: the committed one is only read; windows write the other two in turn; the
//! committed index moves to the last one written only when the chunk is accepted, so an
//! error leaves the stream as it was.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::{Aggregation, Buckets, ChannelStates, DenseSample, JumpTable, Params, Plan};
use crate::error::{Error, Result};
use crate::events::DeviceEvents;
use crate::gpu::{
    grid, grow_slot, reusable_output, upload_checked, write_padded, Binding, DType, DeviceArray,
    GpuContext, GrowBuffer, Staged, TrackedBuffer,
};
use crate::shaders::BINNING;

/// Group 0 of `binning.wgsl`, binding by binding.
const LAYOUT: [Binding; 14] = [
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
    Binding::Uniform,
];

/// Threads per workgroup in `binning.wgsl`.
const WG: u32 = 64;
/// Finite "no sample yet" sentinel for the partial max (matches `NO_MAX` in the shader).
const NO_MAX: f32 = -f32::MAX;
/// Most samples one window spans (and one piece of a bin holds).
pub(crate) const MAX_SPAN: u64 = 16_384;
/// Most segments in one window.
pub(crate) const MAX_WINDOW_SEGS: usize = 4_096;
/// Stride of the per-window uniforms (WebGPU's largest `min_uniform_buffer_offset_alignment`).
const WIN_STRIDE: u64 = 256;

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
    merged: u32,
    pad: [u32; 3],
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

/// What a chunk's input is.
enum Input<'a> {
    /// Dense samples in a buffer (bytes or `f32`).
    Dense {
        buffer: &'a wgpu::Buffer,
        bytes: bool,
    },
    /// Events in per-channel slots.
    Sparse {
        slots: &'a wgpu::Buffer,
        counts: &'a wgpu::Buffer,
        cap: u32,
        merged: bool,
    },
}

/// Device buffers and pipelines of one binning stream.
#[derive(Debug)]
pub(crate) struct GpuBinning {
    ctx: Arc<GpuContext>,
    params: TrackedBuffer,
    jumps: TrackedBuffer,
    windows: Option<TrackedBuffer>,
    base: GpuParams,
    segs: GrowBuffer,
    input: GrowBuffer,
    counts: GrowBuffer,
    state: [GrowBuffer; 3],
    cum: [GrowBuffer; 3],
    /// Which state copy is committed.
    cur: usize,
    /// Whether the committed copy holds this stream's state (else it is zeroed on next use).
    initialized: bool,
    summ: GrowBuffer,
    summ_n: GrowBuffer,
    flags: GrowBuffer,
    /// Host output buffer (reused), and the last device output (reused once its caller let go).
    out: GrowBuffer,
    dev_out: Option<Arc<TrackedBuffer>>,
    /// `dense_local` and `dense_finish` for f32 input (`[0]`) and u8 input (`[1]`).
    pipe_local: [wgpu::ComputePipeline; 2],
    pipe_finish: [wgpu::ComputePipeline; 2],
    pipe_sparse: wgpu::ComputePipeline,
}

/// The chunk's segments as the GPU sees them (long bins cut into pieces), and the windows.
///
/// A segment's *work* is what one invocation loops over for it: its samples for dense input;
/// for events at most `ev_bound` (the most events one channel holds in the chunk) and never
/// more than its samples (after merging, a channel has at most one event per sample). A
/// window holds at most [`MAX_WINDOW_SEGS`] segments and [`MAX_SPAN`] work.
fn gpu_segments(plan: &Plan, ev_bound: Option<u64>) -> (Vec<GpuSeg>, Vec<[u32; 2]>) {
    let work = |len: u64| ev_bound.map_or(len, |b| len.min(b));
    let mut segs = Vec::with_capacity(plan.segments.len());
    let mut windows = Vec::new();
    let (mut w0, mut span) = (0usize, 0u64);
    for s in &plan.segments {
        let mut start = s.start;
        let mut cont = s.continues;
        loop {
            let end = if work(s.end - start) > MAX_SPAN {
                start + MAX_SPAN
            } else {
                s.end
            };
            let whole = end == s.end;
            let w = work(end - start);
            // Close the window before this piece if it would overflow.
            if segs.len() > w0 && (span + w > MAX_SPAN || segs.len() - w0 >= MAX_WINDOW_SEGS) {
                windows.push([w0 as u32, segs.len() as u32]);
                w0 = segs.len();
                span = 0;
            }
            segs.push(GpuSeg {
                start: start as u32,
                end: end as u32,
                row: if whole {
                    s.row.map_or(-1, |r| r as i32)
                } else {
                    -1
                },
                cont: cont as u32,
                out_scale: s.out_scale as f32,
                pad: [0; 3],
            });
            span += w;
            if whole {
                break;
            }
            // A piece that does not finish its bin ends its window: the next piece continues
            // from the partial sums it leaves in the state.
            windows.push([w0 as u32, segs.len() as u32]);
            w0 = segs.len();
            span = 0;
            start = end;
            cont = true;
        }
    }
    if segs.len() > w0 {
        windows.push([w0 as u32, segs.len() as u32]);
    }
    (segs, windows)
}

impl GpuBinning {
    /// The committed state copy, and `Some` when it holds this stream's state.
    pub(crate) fn mark(&self) -> (usize, Option<usize>) {
        (self.cur, self.initialized.then_some(0))
    }

    /// Back to what [`GpuBinning::mark`] returned (before the chunk since).
    pub(crate) fn rewind(&mut self, (cur, initialized): (usize, Option<usize>)) {
        self.cur = cur;
        self.initialized = initialized.is_some();
    }

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
            merged: 0,
            pad: [0; 3],
            wscale: p.wscale as f32,
            inv_tau: jt.inv_tau as f32,
            d_hi,
            d_lo: (jt.d - d_hi as f64) as f32,
        };
        // The settings are compiled into the pipelines (WGSL overrides): the per-sample loops
        // carry no branches on them.
        let settings = [
            ("KIND", base.kind as f64),
            ("AGG", base.agg as f64),
            ("SCALE", base.scale as f64),
        ];
        // The input's element type too, one pipeline per type: llvmpipe ran the u8 branch's
        // load for every f32 sample as well (20 % of the dense time).
        let typed = |u8_input: bool| {
            let mut s = settings.to_vec();
            s.push(("INPUT_U8", u8_input as u32 as f64));
            s
        };
        let (f32_set, u8_set) = (typed(false), typed(true));
        ctx.scoped(|| {
            let params = ctx.uniform(std::mem::size_of::<GpuParams>() as u64, "binning-params")?;
            let rows = jt.gpu_rows();
            let jumps = ctx.uniform((rows.len() * 16) as u64, "binning-jumps")?;
            ctx.queue
                .write_buffer(&jumps, 0, bytemuck::cast_slice(&rows));
            Ok(GpuBinning {
                ctx: ctx.clone(),
                params,
                jumps,
                windows: None,
                base,
                segs: GrowBuffer::new("binning-segs"),
                input: GrowBuffer::new("binning-input"),
                counts: GrowBuffer::new("binning-counts"),
                state: [
                    GrowBuffer::new("binning-state-0"),
                    GrowBuffer::new("binning-state-1"),
                    GrowBuffer::new("binning-state-2"),
                ],
                cum: [
                    GrowBuffer::new("binning-cum-0"),
                    GrowBuffer::new("binning-cum-1"),
                    GrowBuffer::new("binning-cum-2"),
                ],
                cur: 0,
                initialized: false,
                summ: GrowBuffer::new("binning-summ"),
                summ_n: GrowBuffer::new("binning-summ-n"),
                flags: GrowBuffer::new("binning-flags"),
                out: GrowBuffer::new("binning-out"),
                dev_out: None,
                pipe_local: [
                    ctx.pipeline(&BINNING, "dense_local", &f32_set, &LAYOUT)?,
                    ctx.pipeline(&BINNING, "dense_local", &u8_set, &LAYOUT)?,
                ],
                pipe_finish: [
                    ctx.pipeline(&BINNING, "dense_finish", &f32_set, &LAYOUT)?,
                    ctx.pipeline(&BINNING, "dense_finish", &u8_set, &LAYOUT)?,
                ],
                pipe_sparse: ctx.pipeline(&BINNING, "sparse", &settings, &LAYOUT)?,
            })
        })
    }

    /// Forgets the stream: the state is zeroed before the next chunk.
    pub fn reset(&mut self) {
        self.initialized = false;
    }

    /// Largest number of rows of `nc` channels one dense input binding can hold.
    pub fn max_rows(&self, nc: usize, byte_input: bool) -> usize {
        let per_row = if byte_input { nc } else { nc * 4 };
        ((self.ctx.max_binding() as usize) / per_row.max(1)).clamp(1, u32::MAX as usize / nc.max(1))
    }

    /// Makes sure the state buffers exist for `nc` channels and the committed one holds this
    /// stream's state.
    fn prepare_state(&mut self, nc: usize) -> Result<()> {
        let ctx = &self.ctx;
        for k in 0..3 {
            self.state[k].ensure(ctx, 16 * nc as u64)?;
            self.cum[k].ensure(ctx, 8 * nc as u64)?;
        }
        if !self.initialized {
            let st: Vec<[f32; 4]> = vec![[0.0, 0.0, 0.0, NO_MAX]; nc];
            let cum = vec![0u32; 2 * nc];
            let s = self.state[self.cur].ensure(ctx, 0)?;
            let c = self.cum[self.cur].ensure(ctx, 0)?;
            ctx.queue.write_buffer(&s, 0, bytemuck::cast_slice(&st));
            ctx.queue.write_buffer(&c, 0, bytemuck::cast_slice(&cum));
            self.initialized = true;
        }
        Ok(())
    }

    /// The committed stream state of `nc` channels in the common form (the initial state
    /// when the committed copy does not hold this stream's state).
    pub(crate) fn read_state(&self, nc: usize) -> Result<ChannelStates> {
        let (Some(s), Some(c)) = (self.state[self.cur].get(), self.cum[self.cur].get()) else {
            return Ok(ChannelStates::fresh(nc));
        };
        if !self.initialized {
            return Ok(ChannelStates::fresh(nc));
        }
        let ctx = &self.ctx;
        let n = nc as u64;
        let bytes =
            ctx.scoped(|| ctx.submit_and_read(ctx.encoder(), &[(s, 0, 16 * n), (c, 0, 8 * n)]))?;
        let (sb, cb) = bytes.split_at(16 * nc);
        let st: Vec<[f32; 4]> = bytemuck::pod_collect_to_vec(sb);
        let cum: Vec<[u32; 2]> = bytemuck::pod_collect_to_vec(cb);
        let count = self.base.kind == 0;
        let mut out = ChannelStates::fresh(nc);
        for (ch, v) in st.iter().enumerate() {
            // Count keeps its cumulative weight in E.
            if count {
                out.cum[ch] = v[0] as f64;
            } else {
                (out.e[ch], out.a[ch]) = (v[0] as f64, v[1] as f64);
            }
            out.psum[ch] = v[2] as f64;
            out.pmax[ch] = if v[3] == NO_MAX {
                f64::NEG_INFINITY
            } else {
                v[3] as f64
            };
            out.cum_n[ch] = cum[ch][0] as u64 | (cum[ch][1] as u64) << 32;
        }
        Ok(out)
    }

    /// Makes `st` (checked by the caller) the committed stream state.
    ///
    /// # Errors
    /// [`Error::State`] for a value beyond `f32`, before any change; GPU errors of the upload.
    pub(crate) fn write_state(&mut self, st: &ChannelStates) -> Result<()> {
        let nc = st.e.len();
        let count = self.base.kind == 0;
        let narrow = |v: f64| -> Result<f32> {
            let x = v as f32;
            if x.is_finite() {
                Ok(x)
            } else {
                Err(Error::State(format!(
                    "binning state value {v} does not fit the GPU's f32"
                )))
            }
        };
        let mut raw = Vec::with_capacity(nc);
        for c in 0..nc {
            let (e, a) = if count {
                (st.cum[c], 0.0)
            } else {
                (st.e[c], st.a[c])
            };
            let mx = if st.pmax[c] == f64::NEG_INFINITY {
                NO_MAX
            } else {
                narrow(st.pmax[c])?.max(NO_MAX)
            };
            raw.push([narrow(e)?, narrow(a)?, narrow(st.psum[c])?, mx]);
        }
        let cum: Vec<[u32; 2]> = st
            .cum_n
            .iter()
            .map(|&n| [n as u32, (n >> 32) as u32])
            .collect();
        self.initialized = false;
        self.prepare_state(nc)?;
        let ctx = &self.ctx;
        let s = self.state[self.cur].ensure(ctx, 0)?;
        let c = self.cum[self.cur].ensure(ctx, 0)?;
        ctx.queue.write_buffer(&s, 0, bytemuck::cast_slice(&raw));
        ctx.queue.write_buffer(&c, 0, bytemuck::cast_slice(&cum));
        Ok(())
    }

    /// The output buffer for a device result: the previous one if its caller let go of it.
    fn device_out(&mut self, bytes: u64) -> Result<Arc<TrackedBuffer>> {
        reusable_output(&self.ctx, &mut self.dev_out, bytes, "binning-out")
    }

    /// Uploads the chunk's segments, parameters and windows, and records its dispatches.
    /// Returns the encoder and the state index the chunk's last window writes.
    fn record(
        &mut self,
        plan: &Plan,
        nc: usize,
        n: usize,
        input: Input<'_>,
        out: &wgpu::Buffer,
    ) -> Result<(wgpu::CommandEncoder, usize)> {
        let ctx = self.ctx.clone();
        let ev_bound = match input {
            Input::Dense { .. } => None,
            Input::Sparse { cap, .. } => Some(cap as u64),
        };
        let (segs, windows) = gpu_segments(plan, ev_bound);
        let segs_buf = self.segs.ensure(&ctx, (segs.len() * 32) as u64)?;
        ctx.queue
            .write_buffer(&segs_buf, 0, bytemuck::cast_slice(&segs));
        let (sparse, in_buf, counts, bytes, cap, merged) = match input {
            Input::Dense { buffer, bytes } => (
                false,
                buffer.clone(),
                self.counts.ensure(&ctx, 16)?,
                bytes,
                0,
                false,
            ),
            Input::Sparse {
                slots,
                counts,
                cap,
                merged,
            } => (true, slots.clone(), counts.clone(), false, cap, merged),
        };
        let p = GpuParams {
            n_ch: nc as u32,
            n_seg: segs.len() as u32,
            n_samples: n as u32,
            input_u8: bytes as u32,
            cap,
            merged: merged as u32,
            ..self.base
        };
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        let flags = self.flags.ensure(&ctx, 16)?;
        ctx.queue.write_buffer(&flags, 0, &[0u8; 16]);
        let win_bytes = windows.len() as u64 * WIN_STRIDE;
        let win_buf = grow_slot(&mut self.windows, win_bytes, || {
            ctx.uniform(win_bytes.next_power_of_two(), "binning-windows")
        })?;
        let mut win_data = vec![0u8; win_bytes as usize];
        for (k, w) in windows.iter().enumerate() {
            let at = k * WIN_STRIDE as usize;
            win_data[at..at + 8].copy_from_slice(bytemuck::cast_slice(w));
        }
        ctx.queue.write_buffer(&win_buf, 0, &win_data);

        let summ = self.summ.ensure(&ctx, (16 * segs.len() * nc) as u64)?;
        let summ_n = self.summ_n.ensure(&ctx, (4 * segs.len() * nc) as u64)?;
        let states: Vec<(wgpu::Buffer, wgpu::Buffer)> = (0..3)
            .map(|k| Ok((self.state[k].ensure(&ctx, 0)?, self.cum[k].ensure(&ctx, 0)?)))
            .collect::<Result<_>>()?;
        let needs_local = self.base.kind != 0 || self.base.agg == 0;
        let mut enc = ctx.encoder();
        let (mut from, mut to) = (self.cur, (self.cur + 1) % 3);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for (k, w) in windows.iter().enumerate() {
                let resources = [
                    self.params.as_entire_binding(),
                    self.jumps.as_entire_binding(),
                    segs_buf.as_entire_binding(),
                    in_buf.as_entire_binding(),
                    counts.as_entire_binding(),
                    states[from].0.as_entire_binding(),
                    states[from].1.as_entire_binding(),
                    states[to].0.as_entire_binding(),
                    states[to].1.as_entire_binding(),
                    out.as_entire_binding(),
                    summ.as_entire_binding(),
                    summ_n.as_entire_binding(),
                    flags.as_entire_binding(),
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &win_buf,
                        offset: k as u64 * WIN_STRIDE,
                        size: wgpu::BufferSize::new(16),
                    }),
                ];
                let n_win = (w[1] - w[0]) as usize;
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
                    if needs_local && n_win > 1 {
                        run(&self.pipe_local[bytes as usize], n_win * nc);
                    }
                    run(&self.pipe_finish[bytes as usize], n_win * nc);
                }
                // The next window reads what this one wrote and writes the other scratch copy.
                let other = 3 - self.cur - to;
                from = to;
                to = other;
            }
        }
        Ok((enc, from))
    }

    /// Packs a host dense chunk into the input buffer.
    fn upload_dense<T: DenseSample>(&mut self, chunk: ArrayView2<'_, T>) -> Result<wgpu::Buffer> {
        let std = chunk.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        if T::IS_BYTE {
            let bytes: Vec<u8> = data.iter().map(|x| x.to_u8()).collect();
            let buf = self.input.ensure(&self.ctx, bytes.len() as u64)?;
            write_padded(&self.ctx, &buf, 0, &bytes);
            Ok(buf)
        } else {
            let buf = self.input.ensure(&self.ctx, (data.len() * 4) as u64)?;
            match T::as_f32(data) {
                Some(words) => {
                    let view = ArrayView2::from_shape(chunk.dim(), words)
                        .map_err(|e| Error::DeviceArray(e.to_string()))?;
                    upload_checked(&self.ctx, &buf, view)?;
                }
                None => {
                    let words: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
                    write_padded(&self.ctx, &buf, 0, bytemuck::cast_slice(&words));
                }
            }
            Ok(buf)
        }
    }

    /// Submits a recorded chunk, reads back `read` (and the error flag when `check`), and
    /// commits the state when the device accepted the chunk.
    fn finish(
        &mut self,
        enc: wgpu::CommandEncoder,
        last: usize,
        read: Option<(&wgpu::Buffer, u64)>,
        check: bool,
        n: usize,
    ) -> Result<Vec<u8>> {
        let flags = self.flags.ensure(&self.ctx, 16)?;
        let mut ranges = Vec::new();
        if let Some((b, len)) = read {
            ranges.push((b, 0, len));
        }
        if check {
            ranges.push((&flags, 0, 4));
        }
        let mut bytes = self.ctx.submit_and_read(enc, &ranges)?;
        if check {
            let at = bytes.len() - 4;
            let bad = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            bytes.truncate(at);
            if bad > 0 {
                return Err(Error::IndexOutOfRange {
                    what: "device events: a sample outside the chunk, or more events than slots, on this many channels",
                    index: bad as u64,
                    bound: n as u64,
                });
            }
        }
        self.cur = last;
        Ok(bytes)
    }

    fn to_array(bytes: &[u8], rows: usize, nc: usize) -> Result<Array2<f32>> {
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
        Array2::from_shape_vec((rows, nc), v).map_err(|e| Error::Readback(e.to_string()))
    }

    pub fn dense_host<T: DenseSample>(
        &mut self,
        plan: &Plan,
        chunk: ArrayView2<'_, T>,
    ) -> Result<Array2<f32>> {
        let (n, nc) = chunk.dim();
        if n == 0 {
            return Ok(Array2::zeros((0, nc)));
        }
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let bytes = ctx.scoped(|| {
            self.prepare_state(nc)?;
            let input = self.upload_dense(chunk)?;
            let out = self.out.ensure(&ctx, out_bytes)?;
            let (enc, last) = self.record(
                plan,
                nc,
                n,
                Input::Dense {
                    buffer: &input,
                    bytes: T::IS_BYTE,
                },
                &out,
            )?;
            self.finish(enc, last, Some((&out, out_bytes)), false, n)
        })?;
        Self::to_array(&bytes, plan.n_bins, nc)
    }

    pub fn dense_device(&mut self, plan: &Plan, chunk: &DeviceArray) -> Result<DeviceArray> {
        if !Arc::ptr_eq(chunk.context(), &self.ctx) {
            return Err(Error::DeviceArray("chunk lives on another device".into()));
        }
        let bytes = match chunk.dtype() {
            DType::F32 => false,
            DType::U8 => true,
            DType::U32 => return Err(Error::DeviceArray("dense input must be f32 or u8".into())),
        };
        let (n, nc) = (chunk.shape()[0], chunk.shape()[1]);
        if n > self.max_rows(nc, bytes) {
            return Err(Error::DeviceArray(format!(
                "a device chunk of {n} rows × {nc} channels exceeds one binding; split it"
            )));
        }
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let out = ctx.scoped(|| {
            let out = self.device_out(out_bytes)?;
            if n > 0 {
                self.prepare_state(nc)?;
                let (enc, last) = self.record(
                    plan,
                    nc,
                    n,
                    Input::Dense {
                        buffer: &chunk.buffer,
                        bytes,
                    },
                    &out,
                )?;
                self.finish(enc, last, None, false, n)?;
            }
            Ok(out)
        })?;
        Ok(DeviceArray::from_buffer(
            &self.ctx,
            out,
            vec![plan.n_bins, nc],
            DType::F32,
        ))
    }

    /// Host events: duplicates at one (channel, sample) are merged into one slot holding the
    /// summed weight (events per channel per window are then bounded by its span).
    pub fn sparse_host(
        &mut self,
        plan: &Plan,
        b: &Buckets,
        nc: usize,
        scale: bool,
    ) -> Result<Array2<f32>> {
        let n = plan.segments.last().map_or(0, |s| s.end) as usize;
        if n == 0 {
            return Ok(Array2::zeros((0, nc)));
        }
        let mut merged: Vec<Vec<(u32, f32)>> = Vec::with_capacity(nc);
        for c in 0..nc {
            let mut m: Vec<(u32, f64)> = Vec::new();
            for i in b.offsets[c]..b.offsets[c + 1] {
                let w = if scale { b.value[i] as f64 } else { 1.0 };
                match m.last_mut() {
                    Some(last) if last.0 == b.rel[i] => last.1 += w,
                    _ => m.push((b.rel[i], w)),
                }
            }
            merged.push(m.into_iter().map(|(t, w)| (t, w as f32)).collect());
        }
        let cap = merged.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut slots = vec![0u32; nc * cap * 2];
        let mut counts = vec![0u32; nc];
        for (c, m) in merged.iter().enumerate() {
            for (k, &(t, w)) in m.iter().enumerate() {
                slots[2 * (c * cap + k)] = t;
                slots[2 * (c * cap + k) + 1] = w.to_bits();
            }
            counts[c] = m.len() as u32;
        }
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let bytes = ctx.scoped(|| {
            self.prepare_state(nc)?;
            let input = self.input.ensure(&ctx, (slots.len() * 4) as u64)?;
            ctx.queue
                .write_buffer(&input, 0, bytemuck::cast_slice(&slots));
            let cbuf = self.counts.ensure(&ctx, (nc * 4) as u64)?;
            ctx.queue
                .write_buffer(&cbuf, 0, bytemuck::cast_slice(&counts));
            let out = self.out.ensure(&ctx, out_bytes)?;
            let input_desc = Input::Sparse {
                slots: &input,
                counts: &cbuf,
                cap: cap as u32,
                merged: true,
            };
            let (enc, last) = self.record(plan, nc, n, input_desc, &out)?;
            self.finish(enc, last, Some((&out, out_bytes)), false, n)
        })?;
        Self::to_array(&bytes, plan.n_bins, nc)
    }

    pub fn sparse_device(&mut self, plan: &Plan, ev: &DeviceEvents) -> Result<DeviceArray> {
        let (out, staged) = self.stage_sparse_device(plan, ev)?;
        if let Some((enc, last)) = staged {
            let n = ev.n_samples;
            let ctx = self.ctx.clone();
            ctx.scoped(|| self.finish(enc, last, None, true, n).map(drop))?;
        }
        Ok(out)
    }

    /// The commands of [`GpuBinning::sparse_device`] (none for an empty chunk) and the state
    /// copy they leave the new state in, not yet submitted.
    fn stage_sparse_device(
        &mut self,
        plan: &Plan,
        ev: &DeviceEvents,
    ) -> Result<(DeviceArray, Option<(wgpu::CommandEncoder, usize)>)> {
        let nc = ev.n_channels;
        let n = ev.n_samples;
        let ctx = self.ctx.clone();
        let out_bytes = (plan.n_bins * nc * 4) as u64;
        let (out, staged) = ctx.scoped(|| {
            let out = self.device_out(out_bytes)?;
            let mut staged = None;
            if n > 0 {
                self.prepare_state(nc)?;
                let input_desc = Input::Sparse {
                    slots: &ev.slots,
                    counts: &ev.counts,
                    cap: ev.capacity,
                    merged: false,
                };
                staged = Some(self.record(plan, nc, n, input_desc, &out)?);
            }
            Ok((out, staged))
        })?;
        let out = DeviceArray::from_buffer(&self.ctx, out, vec![plan.n_bins, nc], DType::F32);
        Ok((out, staged))
    }

    /// [`GpuBinning::sparse_device`] recorded for a submission shared with the stages before
    /// it (the chain's); the operator moves on to its new state at once (see [`Staged`]).
    pub fn stage_sparse(
        &mut self,
        plan: &Plan,
        ev: &DeviceEvents,
    ) -> Result<(DeviceArray, Option<Staged>)> {
        let (out, staged) = self.stage_sparse_device(plan, ev)?;
        let Some((enc, last)) = staged else {
            return Ok((out, None));
        };
        let flags = self.flags.ensure(&self.ctx, 16)?;
        self.cur = last;
        let staged = Staged {
            commands: enc.finish(),
            checks: vec![flags],
        };
        Ok((out, Some(staged)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binning::Segment;

    fn seg(start: u64, end: u64, row: Option<usize>) -> Segment {
        Segment {
            start,
            end,
            row,
            out_scale: 1.0,
            continues: start == 0,
        }
    }

    #[test]
    fn windows_bound_the_work_of_an_invocation() {
        // One bin of 40 000 samples: three pieces, each ending its window.
        let plan = Plan {
            first_bin: 0,
            n_bins: 1,
            segments: vec![seg(0, 40_000, Some(0)), seg(40_000, 40_000, None)],
        };
        let (segs, wins) = gpu_segments(&plan, None);
        assert_eq!(segs.len(), 4);
        assert_eq!((segs[0].row, segs[1].row, segs[2].row), (-1, -1, 0));
        assert_eq!((segs[1].cont, segs[2].cont), (1, 1));
        assert_eq!(wins[0], [0, 1]);
        assert_eq!(wins[1], [1, 2]);
        // 10 000 one-sample bins: windows of at most MAX_WINDOW_SEGS segments.
        let segments: Vec<Segment> = (0..10_000)
            .map(|k| seg(k, k + 1, Some(k as usize)))
            .collect();
        let plan = Plan {
            first_bin: 0,
            n_bins: 10_000,
            segments,
        };
        let (segs, wins) = gpu_segments(&plan, None);
        assert_eq!(segs.len(), 10_000);
        assert!(wins
            .iter()
            .all(|w| (w[1] - w[0]) as usize <= MAX_WINDOW_SEGS));
        assert_eq!(wins.last().map(|w| w[1]), Some(10_000));
        for pair in wins.windows(2) {
            assert_eq!(pair[0][1], pair[1][0]);
        }
        // Sparse input with few events: a long bin stays whole.
        let plan = Plan {
            first_bin: 0,
            n_bins: 1,
            segments: vec![seg(0, 1_000_000, Some(0)), seg(1_000_000, 1_000_000, None)],
        };
        let (segs, wins) = gpu_segments(&plan, Some(10));
        assert_eq!((segs.len(), wins.len()), (2, 1));
    }
}
