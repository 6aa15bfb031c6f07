//! The GPU engine of the max-rate classifier: state on the device (double-buffered:
//! `cur` is committed, `next` is built by an update or a load and becomes `cur` only when
//! the device reports nothing wrong), and the dispatches of `shaders/classifier.wgsl`.
//!
//! A call runs its batch in sub-batches of rows, each small enough for one storage binding
//! (inputs, partial sums) and for llvmpipe's loop limit. Per sub-batch, in one compute pass:
//! the time means (when the input has a time axis, or to repack device rows whose length is
//! not a multiple of 4), `regress_partial` + `regress_finish` (logits with the committed
//! state), `update` (built into the `next` state). Host rows are uploaded per sub-batch into
//! one reused buffer, a submission each; the last submission reads back logits and flags.

use std::num::NonZeroU64;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{DeviceInput, DeviceKind, UpdatePlan};
use crate::error::{Error, Result};
use crate::gpu::{grid, grow_slot, Binding, GpuContext, GrowBuffer, TrackedBuffer};
use crate::shaders::CLASSIFIER;

/// Group 0 of `classifier.wgsl`, binding by binding.
const LAYOUT: [Binding; 16] = [
    Binding::Uniform,   // 0 params
    Binding::Read,      // 1 cmeta
    Binding::Read,      // 2 xraw
    Binding::Read,      // 3 x4
    Binding::Read,      // 4 rates_cur
    Binding::ReadWrite, // 5 rates_next
    Binding::ReadWrite, // 6 props_next
    Binding::Read,      // 7 asg_cur
    Binding::Read,      // 8 wts_cur
    Binding::ReadWrite, // 9 asg_next
    Binding::ReadWrite, // 10 wts_next
    Binding::Read,      // 11 occ_cur
    Binding::ReadWrite, // 12 occ_next
    Binding::ReadWrite, // 13 partials (and logits)
    Binding::ReadWrite, // 14 flags
    Binding::ReadWrite, // 15 xmean
];

/// Threads per workgroup.
const WG: u64 = 64;
/// Most rows per sub-batch (an `update` invocation loops once per row).
const MAX_ROWS: usize = 8192;
/// Most planes per `time_mean` dispatch (an invocation loops four times per plane).
const MAX_PLANES: usize = 8192;
/// Most classes (an `update` invocation loops about 33·K times over them).
pub(crate) const MAX_CLASSES: usize = 512;
/// Most regress chunks per row (a `regress_finish` invocation loops once per chunk).
const MAX_CHUNKS: usize = 16_384;
/// Neurons per regress invocation (at least; more when a row would need more chunks).
const CHUNK: usize = 256;
/// "No position" in the flags.
const NONE: u32 = u32::MAX;
/// Size of [`GpuParams`] in bytes.
const PARAMS_BYTES: u64 = 80;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct GpuParams {
    n: u32,
    k: u32,
    n4q: u32,
    rows: u32,
    x_shift4: u32,
    chunk_q: u32,
    n_chunks: u32,
    n_cg: u32,
    mode: u32,
    proportional: u32,
    row0: u32,
    planes: u32,
    plane_stride: u32,
    kind: u32,
    t0: u32,
    n_steps: u32,
    raw_shift: u32,
    meta_perm: u32,
    lg_off: u32,
    pad: u32,
}

/// Which input a call reads.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Host(&'a [f32]),
    Device(DeviceInput<'a>),
}

/// What the input bindings of a dispatch are.
#[derive(Debug, Clone, Copy)]
enum XBind {
    /// `x4` is the host upload buffer.
    Upload,
    /// `x4` is the time-mean scratch buffer.
    Mean,
    /// `x4` is a window `(offset, size)` of the device input's buffer.
    Window(u64, u64),
    /// `xraw` is a window `(offset, size)` of the device input's buffer; `xmean` the scratch.
    Raw(u64, u64),
}

/// One dispatch of a submission.
struct Dispatch {
    pipe: usize,
    params: GpuParams,
    groups: u32,
    x: XBind,
}

const P_TIME_MEAN: usize = 0;
const P_UPDATE: usize = 1;
const P_DERIVE: usize = 2;
const P_PARTIAL: usize = 3;
const P_FINISH: usize = 4;

/// Device state and pipelines of one classifier.
#[derive(Debug)]
pub(crate) struct GpuClassifier {
    ctx: Arc<GpuContext>,
    n: usize,
    k: usize,
    /// `N4 = ⌈N/4⌉·4`, the padded row length of update / regress inputs.
    n4: usize,
    chunk_q: usize,
    n_chunks: usize,
    n_cg: usize,
    /// Largest byte range one binding may cover, less the offset alignment.
    budget: u64,
    align: u64,
    rates: [TrackedBuffer; 2],
    props: [TrackedBuffer; 2],
    asg: [TrackedBuffer; 2],
    wts: [TrackedBuffer; 2],
    occ: [TrackedBuffer; 2],
    cur: usize,
    flags: TrackedBuffer,
    params: Option<TrackedBuffer>,
    slot: u64,
    /// Persistent mappable staging buffer for host rows.
    stage: Option<TrackedBuffer>,
    meta: GrowBuffer,
    upload: GrowBuffer,
    mean: GrowBuffer,
    partials: GrowBuffer,
    result: GrowBuffer,
    dummy: [TrackedBuffer; 2],
    pipes: Vec<wgpu::ComputePipeline>,
}

impl GpuClassifier {
    pub fn new(ctx: &Arc<GpuContext>, n: usize, k: usize) -> Result<Self> {
        let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
        let budget = ctx.max_binding().saturating_sub(align) / 16 * 16;
        if k > MAX_CLASSES {
            return Err(Error::setting(
                "n_classes",
                format!("at most {MAX_CLASSES} classes on the GPU engine, got {k}"),
            ));
        }
        let n4 = n.div_ceil(4) * 4;
        let nk = (n as u64) * (k as u64);
        if nk * 4 > budget || (n4 as u64) * 4 * 4 > budget || nk > u32::MAX as u64 / 2 {
            return Err(Error::setting(
                "n_neurons",
                format!(
                    "N·K = {nk} rates need {} bytes, more than one storage binding of this \
                     device holds ({budget} bytes); use the CPU engine",
                    nk * 4
                ),
            ));
        }
        let n4q = n4 / 4;
        let chunk_q = (CHUNK / 4).max(n4q.div_ceil(MAX_CHUNKS));
        let n_chunks = n4q.div_ceil(chunk_q);
        let n_cg = k.div_ceil(16);
        let slot = PARAMS_BYTES
            .next_multiple_of((ctx.limits.min_uniform_buffer_offset_alignment as u64).max(16));
        let entries = [
            "time_mean",
            "update",
            "derive",
            "regress_partial",
            "regress_finish",
        ];
        let mut g = ctx.scoped(|| {
            let pipes = entries
                .iter()
                .map(|e| ctx.pipeline(&CLASSIFIER, e, &[], &LAYOUT))
                .collect::<Result<Vec<_>>>()?;
            let two = |bytes: u64, label: &str| -> Result<[TrackedBuffer; 2]> {
                Ok([ctx.storage(bytes, label)?, ctx.storage(bytes, label)?])
            };
            Ok(GpuClassifier {
                ctx: ctx.clone(),
                n,
                k,
                n4,
                chunk_q,
                n_chunks,
                n_cg,
                budget,
                align,
                rates: two(nk * 4, "classifier-rates")?,
                props: two(nk * 4, "classifier-proportions")?,
                asg: two(n4 as u64 * 4, "classifier-assignments")?,
                wts: two(n4 as u64 * 4, "classifier-weights")?,
                occ: two(k as u64 * 4, "classifier-occurrences")?,
                cur: 0,
                flags: ctx.storage(16, "classifier-flags")?,
                params: None,
                slot,
                stage: None,
                meta: GrowBuffer::new("classifier-meta"),
                upload: GrowBuffer::new("classifier-inputs"),
                mean: GrowBuffer::new("classifier-means"),
                partials: GrowBuffer::new("classifier-partials"),
                result: GrowBuffer::new("classifier-result"),
                dummy: [
                    ctx.storage(16, "classifier-dummy")?,
                    ctx.storage(16, "classifier-dummy")?,
                ],
                pipes,
            })
        })?;
        g.set_rates(&vec![0.0; n * k])?;
        Ok(g)
    }

    /// Additions on the path of one logit sum (the error bound's factor, less 2): a chunk's
    /// neurons, 64 chunks per group, the groups.
    pub fn regress_depth(&self) -> usize {
        4 * self.chunk_q + 64 + self.n_chunks.div_ceil(64)
    }

    fn base(&self) -> GpuParams {
        GpuParams {
            n: self.n as u32,
            k: self.k as u32,
            n4q: (self.n4 / 4) as u32,
            chunk_q: self.chunk_q as u32,
            n_chunks: self.n_chunks as u32,
            n_cg: self.n_cg as u32,
            ..Default::default()
        }
    }

    /// Rows per sub-batch.
    fn rows_per_sub(&self) -> usize {
        let (n4, k) = (self.n4 as u64, self.k as u64);
        let by_x = self.budget / (n4 * 4);
        let by_partials = self.budget / ((self.n_chunks as u64 + 1) * k * 4);
        (by_x.min(by_partials) as usize).clamp(1, MAX_ROWS)
    }

    /// Writes `params` into uniform slots (growing the buffer as needed).
    fn write_params(&mut self, params: &[GpuParams]) -> Result<wgpu::Buffer> {
        let need = self.slot * params.len().max(1) as u64;
        let ctx = &self.ctx;
        let buf = grow_slot(&mut self.params, need, || {
            ctx.uniform(need.next_power_of_two(), "classifier-params")
        })?;
        let mut bytes = vec![0u8; need as usize];
        for (i, p) in params.iter().enumerate() {
            let at = i * self.slot as usize;
            bytes[at..at + PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(p));
        }
        self.ctx.queue.write_buffer(&buf, 0, &bytes);
        Ok(buf)
    }

    /// Records `dispatches` in one compute pass.
    fn record(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        dispatches: &[Dispatch],
        device_buf: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let params: Vec<GpuParams> = dispatches.iter().map(|d| d.params).collect();
        let pbuf = self.write_params(&params)?;
        let ctx = &self.ctx;
        let (cur, next) = (self.cur, 1 - self.cur);
        let meta = self.meta.ensure(ctx, 16)?;
        let upload = self.upload.ensure(ctx, 16)?;
        let mean = self.mean.ensure(ctx, 16)?;
        let partials = self.partials.ensure(ctx, 16)?;
        let [d0, d1] = &self.dummy;
        let window = |offset: u64, size: u64| match device_buf {
            Some(b) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: b,
                offset,
                size: NonZeroU64::new(size),
            }),
            None => d0.as_entire_binding(),
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for (i, d) in dispatches.iter().enumerate() {
            let (xraw, x4, xmean) = match d.x {
                XBind::Upload => (
                    d0.as_entire_binding(),
                    upload.as_entire_binding(),
                    d1.as_entire_binding(),
                ),
                XBind::Mean => (
                    d0.as_entire_binding(),
                    mean.as_entire_binding(),
                    d1.as_entire_binding(),
                ),
                XBind::Window(o, s) => {
                    (d0.as_entire_binding(), window(o, s), d1.as_entire_binding())
                }
                XBind::Raw(o, s) => (
                    window(o, s),
                    d0.as_entire_binding(),
                    mean.as_entire_binding(),
                ),
            };
            let resources = [
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &pbuf,
                    offset: i as u64 * self.slot,
                    size: NonZeroU64::new(PARAMS_BYTES),
                }),
                meta.as_entire_binding(),
                xraw,
                x4,
                self.rates[cur].as_entire_binding(),
                self.rates[next].as_entire_binding(),
                self.props[next].as_entire_binding(),
                self.asg[cur].as_entire_binding(),
                self.wts[cur].as_entire_binding(),
                self.asg[next].as_entire_binding(),
                self.wts[next].as_entire_binding(),
                self.occ[cur].as_entire_binding(),
                self.occ[next].as_entire_binding(),
                partials.as_entire_binding(),
                self.flags.as_entire_binding(),
                xmean,
            ];
            let pipe = &self.pipes[d.pipe];
            let bg = ctx.bind(pipe, &resources);
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, &bg, &[]);
            let (x, y, z) = grid(d.groups);
            pass.dispatch_workgroups(x, y, z);
        }
        Ok(())
    }

    /// The window of `buf` covering bytes `[start, end)`: (offset, size, shift in bytes).
    /// The size is a multiple of 16 where the buffer allows (vec4 arrays), else of 4.
    fn window(&self, buf: &wgpu::Buffer, start: u64, end: u64) -> (u64, u64, u64) {
        let ws = start / self.align * self.align;
        let room = buf.size() - ws;
        let size = (end - ws).next_multiple_of(16);
        let size = if size <= room { size } else { room / 4 * 4 };
        (ws, size, start - ws)
    }

    /// Copies `bytes` (a multiple of 4, not empty) into `dst` through the persistent
    /// mappable staging buffer: one `memcpy` into memory that stays mapped-in between calls
    /// (`queue.write_buffer` allocates, and page-faults, a fresh staging buffer per call).
    /// Mapping waits for earlier submissions that still read the staging buffer.
    fn stage_upload(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        bytes: &[u8],
    ) -> Result<()> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let ctx = &self.ctx;
        let stage = grow_slot(&mut self.stage, len, || {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("classifier-staging"),
                size: len.next_multiple_of(1 << 16),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        stage.map_async(wgpu::MapMode::Write, 0..len, move |r| {
            let _ = tx.send(r);
        });
        let mapped = self
            .ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))
            .and_then(|_| {
                rx.recv()
                    .map_err(|e| Error::Readback(e.to_string()))?
                    .map_err(|e| Error::Readback(format!("mapping the staging buffer: {e}")))
            })
            .and_then(|_| {
                let mut view = stage
                    .get_mapped_range_mut(0..len)
                    .map_err(|e| Error::Readback(e.to_string()))?;
                view.copy_from_slice(bytes);
                Ok(())
            });
        if mapped.is_err() {
            // Never reuse a buffer whose mapping state is unknown.
            self.stage = None;
            return mapped;
        }
        stage.unmap();
        enc.copy_buffer_to_buffer(&stage, 0, dst, 0, len);
        Ok(())
    }

    /// Workgroups for the derive part (16 neurons per invocation).
    fn derive_groups(&self) -> u32 {
        (self.n4 as u64).div_ceil(16 * WG) as u32
    }

    /// Replaces the rates and recomputes the derived state on the device.
    pub fn set_rates(&mut self, r: &[f32]) -> Result<()> {
        let ctx = self.ctx.clone();
        let next = 1 - self.cur;
        let flags = ctx.scoped(|| {
            ctx.queue
                .write_buffer(&self.rates[next], 0, bytemuck::cast_slice(r));
            ctx.queue
                .write_buffer(&self.flags, 0, bytemuck::cast_slice(&[NONE; 4]));
            let mut enc = ctx.encoder();
            enc.clear_buffer(&self.occ[next], 0, None);
            let d = Dispatch {
                pipe: P_DERIVE,
                params: self.base(),
                groups: self.derive_groups(),
                x: XBind::Upload,
            };
            self.record(&mut enc, &[d], None)?;
            ctx.submit_and_read(enc, &[(&self.flags, 0, 16)])
        })?;
        let f: Vec<u32> = bytemuck::pod_collect_to_vec(&flags);
        if f[1] != NONE {
            let i = f[1] as usize;
            return Err(Error::NonFinite {
                what: "rates (sample = neuron, channel = class)",
                sample: i / self.k,
                channel: i % self.k,
                value: r.get(i).map_or(f64::NAN, |&v| v as f64),
            });
        }
        self.cur = next;
        Ok(())
    }

    pub fn run_host(
        &mut self,
        x: &[f32],
        batch: usize,
        regress: bool,
        prop: bool,
        plan: Option<&UpdatePlan>,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        self.run(Source::Host(x), batch, regress, prop, plan)
    }

    pub fn run_device(
        &mut self,
        input: DeviceInput<'_>,
        regress: bool,
        prop: bool,
        plan: Option<&UpdatePlan>,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        if !Arc::ptr_eq(input.array.context(), &self.ctx) {
            return Err(Error::DeviceArray("inputs live on another device".into()));
        }
        if input.array.buffer().size() < input.array.byte_len() {
            return Err(Error::DeviceArray("buffer shorter than its shape".into()));
        }
        self.run(Source::Device(input), input.batch, regress, prop, plan)
    }

    /// `cmeta` for a sub-batch: decay bits, counts, class starts, rows sorted by class.
    fn meta_words(&self, plan: &UpdatePlan, b0: usize, b1: usize) -> Vec<u32> {
        let k = self.k;
        let mut m = Vec::with_capacity(3 * k + 1 + (b1 - b0));
        m.extend(plan.decay.iter().map(|&d| (d as f32).to_bits()));
        m.extend(plan.counts.iter().map(|&c| c as u32));
        let mut starts = Vec::with_capacity(k + 1);
        let mut rows = Vec::with_capacity(b1 - b0);
        for c in 0..k {
            starts.push(rows.len() as u32);
            let members = &plan.order[plan.offs[c]..plan.offs[c + 1]];
            // Rows are ascending within a class: the sub-batch's are one run.
            let lo = members.partition_point(|&b| (b as usize) < b0);
            let hi = members.partition_point(|&b| (b as usize) < b1);
            rows.extend(members[lo..hi].iter().map(|&b| b - b0 as u32));
        }
        starts.push(rows.len() as u32);
        m.extend(starts);
        m.extend(rows);
        m
    }

    /// Time-mean dispatches for rows `[b0, b1)` of a device input with a time axis (or a
    /// plain input to repack: one plane, `T = 1`).
    fn time_mean_dispatches(&self, inp: &DeviceInput<'_>, b0: usize, b1: usize) -> Vec<Dispatch> {
        let (n, bsz, rows) = (self.n as u64, inp.batch as u64, (b1 - b0) as u64);
        let es: u64 = match inp.kind {
            DeviceKind::TimeF32 | DeviceKind::Plain => 4,
            DeviceKind::TimeU8 | DeviceKind::Packed => 1,
        };
        let plane = bsz * n * es;
        let buf = inp.array.buffer();
        let extra = self.budget.saturating_sub(rows * n * es) / plane.max(1);
        let per = ((extra + 1) as usize).min(MAX_PLANES);
        let planes = inp.planes;
        let mut out = Vec::new();
        let mut p0 = 0usize;
        while p0 < planes {
            let p1 = (p0 + per).min(planes);
            let start = (p0 as u64 * bsz + b0 as u64) * n * es;
            let end = ((p1 as u64 - 1) * bsz + b1 as u64) * n * es;
            let (off, size, shift) = self.window(buf, start, end);
            let params = GpuParams {
                rows: rows as u32,
                row0: b0 as u32,
                mode: (p0 == 0) as u32 | (((p1 == planes) as u32) << 1),
                planes: (p1 - p0) as u32,
                plane_stride: (bsz * n) as u32,
                kind: match inp.kind {
                    DeviceKind::TimeF32 | DeviceKind::Plain => 0,
                    DeviceKind::TimeU8 => 1,
                    DeviceKind::Packed => 2,
                },
                t0: if inp.kind == DeviceKind::Packed {
                    8 * p0 as u32
                } else {
                    p0 as u32
                },
                n_steps: inp.n_steps as u32,
                raw_shift: (shift / es) as u32,
                ..self.base()
            };
            out.push(Dispatch {
                pipe: P_TIME_MEAN,
                params,
                groups: (rows * self.n4 as u64 / 4).div_ceil(WG) as u32,
                x: XBind::Raw(off, size),
            });
            p0 = p1;
        }
        out
    }

    fn run(
        &mut self,
        src: Source<'_>,
        batch: usize,
        regress: bool,
        prop: bool,
        plan: Option<&UpdatePlan>,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (n, k, n4) = (self.n, self.k, self.n4);
        let per = self.rows_per_sub();
        let n_sub = batch.div_ceil(per);
        let result_bytes = (batch * k * 4) as u64;
        let ctx = self.ctx.clone();
        let next = 1 - self.cur;
        let device_buf = match src {
            Source::Device(d) => Some(d.array.buffer().clone()),
            Source::Host(_) => None,
        };
        let bytes = ctx.scoped(|| {
            ctx.queue
                .write_buffer(&self.flags, 0, bytemuck::cast_slice(&[NONE; 4]));
            let result = self.result.ensure(&ctx, result_bytes)?;
            let mut staged = Vec::new();
            for s in 0..n_sub {
                let (b0, b1) = (s * per, ((s + 1) * per).min(batch));
                let rows = b1 - b0;
                let last = s + 1 == n_sub;
                let mut ds = Vec::new();
                let mut enc = ctx.encoder();
                // Inputs of the sub-batch, as rows of N4 floats.
                let (x, x_shift4) = match src {
                    Source::Host(x) => {
                        let buf = self.upload.ensure(&ctx, (rows * n4 * 4) as u64)?;
                        let part = &x[b0 * n..b1 * n];
                        if n4 == n {
                            self.stage_upload(&mut enc, &buf, bytemuck::cast_slice(part))?;
                        } else {
                            staged.clear();
                            staged.resize(rows * n4, 0.0f32);
                            for (dst, src) in staged.chunks_exact_mut(n4).zip(part.chunks_exact(n))
                            {
                                dst[..n].copy_from_slice(src);
                            }
                            self.stage_upload(&mut enc, &buf, bytemuck::cast_slice(&staged))?;
                        }
                        (XBind::Upload, 0u32)
                    }
                    Source::Device(d) if d.kind == DeviceKind::Plain && n4 == n => {
                        let (off, size, shift) =
                            self.window(d.array.buffer(), (b0 * n * 4) as u64, (b1 * n * 4) as u64);
                        (XBind::Window(off, size), (shift / 16) as u32)
                    }
                    Source::Device(d) => {
                        self.mean.ensure(&ctx, (rows * n4 * 4) as u64)?;
                        ds.extend(self.time_mean_dispatches(&d, b0, b1));
                        (XBind::Mean, 0)
                    }
                };
                let sub = GpuParams {
                    rows: rows as u32,
                    x_shift4,
                    row0: b0 as u32,
                    proportional: prop as u32,
                    lg_off: (rows * k * self.n_chunks) as u32,
                    ..self.base()
                };
                if regress {
                    self.partials
                        .ensure(&ctx, (rows * k * (self.n_chunks + 1) * 4) as u64)?;
                    let row_groups = (rows as u64).div_ceil(WG);
                    ds.push(Dispatch {
                        pipe: P_PARTIAL,
                        params: sub,
                        groups: (row_groups * (self.n_chunks * self.n_cg) as u64) as u32,
                        x,
                    });
                    ds.push(Dispatch {
                        pipe: P_FINISH,
                        params: sub,
                        groups: ((rows * k) as u64).div_ceil(WG) as u32,
                        x,
                    });
                }
                if let Some(plan) = plan {
                    let m = self.meta_words(plan, b0, b1);
                    let mbuf = self.meta.ensure(&ctx, (m.len() * 4) as u64)?;
                    ctx.queue.write_buffer(&mbuf, 0, bytemuck::cast_slice(&m));
                    ds.push(Dispatch {
                        pipe: P_UPDATE,
                        params: GpuParams {
                            mode: (s == 0) as u32 | ((last as u32) << 1),
                            meta_perm: (3 * k + 1) as u32,
                            ..sub
                        },
                        groups: ((n4 / 4) as u64).div_ceil(4 * WG) as u32,
                        x,
                    });
                }
                if last && plan.is_some() {
                    enc.clear_buffer(&self.occ[next], 0, None);
                }
                self.record(&mut enc, &ds, device_buf.as_ref())?;
                if regress {
                    let partials = self.partials.ensure(&ctx, 16)?;
                    enc.copy_buffer_to_buffer(
                        &partials,
                        (rows * k * self.n_chunks * 4) as u64,
                        &result,
                        (b0 * k * 4) as u64,
                        (rows * k * 4) as u64,
                    );
                }
                if last {
                    let read: Vec<(&wgpu::Buffer, u64, u64)> = if regress {
                        vec![(&result, 0, result_bytes), (&self.flags, 0, 16)]
                    } else {
                        vec![(&self.flags, 0, 16)]
                    };
                    return ctx.submit_and_read(enc, &read);
                }
                ctx.queue.submit(Some(enc.finish()));
            }
            Ok(Vec::new())
        })?;
        let read = if regress { result_bytes as usize } else { 0 };
        if bytes.len() < read + 16 {
            return Err(Error::Readback("short read-back".into()));
        }
        let f: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[read..read + 16]);
        if f.iter().any(|&v| v != NONE) {
            if let Some(e) = self.diagnose(src, batch, &f)? {
                return Err(e);
            }
        }
        if plan.is_some() {
            self.cur = next;
        }
        if !regress {
            return Ok((Vec::new(), Vec::new()));
        }
        let logits: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[..read]);
        let labels = logits
            .chunks_exact(k)
            .map(|row| {
                let mut bi = 0;
                for (c, &v) in row.iter().enumerate() {
                    if v > row[bi] {
                        bi = c;
                    }
                }
                bi
            })
            .collect();
        Ok((logits, labels))
    }

    /// Turns raised flags into an error (or none: a logit sum that overflowed `f32` with
    /// finite inputs is not an error, its logit is 0).
    fn diagnose(&self, src: Source<'_>, batch: usize, f: &[u32]) -> Result<Option<Error>> {
        let n = self.n;
        // A non-finite input, located exactly on the host copy of the rows.
        let located = match src {
            Source::Host(x) => super::locate_non_finite("inputs", x, n),
            Source::Device(d) if d.kind == DeviceKind::Plain => {
                let host = d.array.to_host::<f32>()?;
                let s = host.as_slice().unwrap_or(&[]);
                super::locate_non_finite("device inputs", &s[..(batch * n).min(s.len())], n)
            }
            Source::Device(d) if d.kind == DeviceKind::TimeF32 && f[3] != NONE => {
                Some(Error::NonFinite {
                    what: "device inputs' time mean (sample = row, channel = neuron)",
                    sample: f[3] as usize / n,
                    channel: f[3] as usize % n,
                    value: f64::NAN,
                })
            }
            Source::Device(_) => None,
        };
        if located.is_some() {
            return Ok(located);
        }
        if f[1] != NONE || f[2] != NONE {
            let (neuron, class) = if f[1] != NONE {
                (f[1] as usize / self.k, f[1] as usize % self.k)
            } else {
                (f[2] as usize, 0)
            };
            return Ok(Some(Error::NonFinite {
                what: "updated rates overflow f32 (sample = neuron, channel = class)",
                sample: neuron,
                channel: class,
                value: f64::INFINITY,
            }));
        }
        Ok(None)
    }

    fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.ctx.scoped(|| {
            let enc = self.ctx.encoder();
            self.ctx.submit_and_read(enc, &[(buf, 0, bytes)])
        })
    }

    pub fn rates(&self) -> Result<Vec<f64>> {
        let b = self.read(&self.rates[self.cur], (self.n * self.k * 4) as u64)?;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&b);
        Ok(v.into_iter().map(f64::from).collect())
    }

    pub fn proportions(&self) -> Result<Vec<f64>> {
        let b = self.read(&self.props[self.cur], (self.n * self.k * 4) as u64)?;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&b);
        Ok(v.into_iter().map(f64::from).collect())
    }

    pub fn assignments(&self) -> Result<Vec<usize>> {
        let b = self.read(&self.asg[self.cur], (self.n * 4) as u64)?;
        let v: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
        Ok(v.into_iter().map(|a| a as usize).collect())
    }

    pub fn occurrences(&self) -> Result<Vec<u64>> {
        let b = self.read(&self.occ[self.cur], (self.k * 4) as u64)?;
        let v: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
        Ok(v.into_iter().map(u64::from).collect())
    }
}
