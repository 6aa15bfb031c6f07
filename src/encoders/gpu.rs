//! The GPU engine of the spike encoders: buffers (reused across calls), the dispatch plan,
//! and the dispatches of `shaders/encoders.wgsl`.
//!
//! Two plans produce the same bytes:
//! * the **word kernels** (`rate`, `latency`, `angle`): one thread per 32-bit output word, any
//!   layout, the output cut into windows of at most one binding (input windowed by batch rows
//!   for batch-major rate);
//! * the **two-pass kernels**, when words never straddle two samples or steps and everything
//!   fits one binding: pass A evaluates each input element once (rate threshold, latency
//!   spike-time byte) into a scratch buffer, pass B writes one output word (or 16-byte chunk)
//!   per thread on a 2-D grid (chunk, step). On a software adapter this is an order of
//!   magnitude faster than the word kernels.

use std::num::NonZeroU64;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{non_finite, LatencyParams, RateParams, ShiftPlan};
use crate::error::{Error, Result};
use crate::gpu::{
    grid, grow_slot, reusable_output, write_padded, Binding, DType, DeviceArray, GpuContext,
    GrowBuffer, TrackedBuffer, MAX_GROUPS_PER_DIM,
};
use crate::shaders::ENCODERS;

/// A binding of `len` bytes of `buf` from `off`.
fn sized(buf: &wgpu::Buffer, off: u64, len: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: off,
        size: NonZeroU64::new(len),
    })
}

/// Group 0 of `encoders.wgsl`.
const LAYOUT: [Binding; 5] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Threads per workgroup in `encoders.wgsl`.
const WG: u64 = 64;
/// Largest output window of one job. With [`MAX_SLICE`] it keeps every in-kernel byte offset
/// (`m0 + byte`) below 2³¹, the range of the shader's reciprocal division.
const MAX_JOB_BYTES: u64 = 1 << 30;
/// Largest outer slice (`M`) the kernels index.
const MAX_SLICE: u64 = 1 << 30;
/// Steps (or step bytes) written by one pass-B thread (`STEPS_PER_THREAD` in the shader).
const STEPS_PER_THREAD: u64 = 4;
/// "No non-finite input seen".
const NONE_BAD: u32 = u32::MAX;
/// Largest latency step count of the two-pass kernels: spike times are bytes with 255 for
/// "silent", which must match no step (unpacked) and no step byte 255/8 = 31 (packed).
const MAX_BYTE_STEPS: u32 = 248;

/// One dispatch's uniform block (mirrors `Job` in the shader).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct Job {
    n_bytes: u32,
    o0: u32,
    m0: u32,
    big_m: u32,
    inner: u32,
    q_len: u32,
    in_shift: u32,
    steps: u32,
    pos_lo: u32,
    pos_hi: u32,
    key_lo: u32,
    key_hi: u32,
    flags: u32,
    max_r: f32,
    x_cap: f32,
    threshold: f32,
    n_edges: u32,
    rank: u32,
    n_axes: u32,
    m_magic: u32,
    m_shift: u32,
    f_magic: u32,
    f_shift: u32,
    n_cols: u32,
    b_words: u32,
    q_words: u32,
    t_out: u32,
    pad: [u32; 5],
}

/// The reciprocal `(m, s)` with `⌊n/d⌋ = ⌊n·m / 2³²⌋ >> s` for every `n < 2³¹`
/// (`div_magic` in the shader; `m = 0` stands for `d = 1`). With `l = ⌈log₂ d⌉`,
/// `m = ⌈2^(31+l)/d⌉` satisfies `2^(31+l) ≤ m·d < 2^(31+l) + 2^l`, the condition for exact
/// division of 31-bit numerators (Granlund & Montgomery, 1994); `m < 2³²` since `d > 2^(l−1)`.
pub(crate) fn magic(d: u32) -> (u32, u32) {
    if d <= 1 {
        return (0, 0);
    }
    let l = 32 - (d - 1).leading_zeros();
    let m = (1u64 << (31 + l)).div_ceil(d as u64);
    (m as u32, l - 1)
}

/// Which kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Rate,
    Latency,
    Angle,
    Shift32,
    Shift8,
    RateThr,
    RateW,
    RateW4,
    LatencyTs,
    LatencyW,
    LatencyW4,
}

const ENTRIES: [Entry; 11] = [
    Entry::Rate,
    Entry::Latency,
    Entry::Angle,
    Entry::Shift32,
    Entry::Shift8,
    Entry::RateThr,
    Entry::RateW,
    Entry::RateW4,
    Entry::LatencyTs,
    Entry::LatencyW,
    Entry::LatencyW4,
];

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Rate => "rate",
            Entry::Latency => "latency",
            Entry::Angle => "angle",
            Entry::Shift32 => "shift32",
            Entry::Shift8 => "shift8",
            Entry::RateThr => "rate_thr",
            Entry::RateW => "rate_w",
            Entry::RateW4 => "rate_w4",
            Entry::LatencyTs => "latency_ts",
            Entry::LatencyW => "latency_w",
            Entry::LatencyW4 => "latency_w4",
        }
    }
}

/// Which buffer a binding refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buf {
    /// The call's input (binding 1) or output (binding 3).
    Io,
    /// The encoder's scratch buffer (pass A writes it, pass B reads it).
    Scratch,
}

/// One dispatch: kernel (and its `PACKED` specialisation), uniform block, bound byte ranges
/// and grid.
struct Dispatch {
    entry: Entry,
    packed: bool,
    job: Job,
    input: (Buf, u64, u64),
    out: (Buf, u64, u64),
    groups: (u32, u32, u32),
}

impl Dispatch {
    /// The pipeline-overridable constants of the dispatch's kernel.
    fn constants(&self) -> &'static [(&'static str, f64)] {
        match (self.entry, self.packed) {
            (Entry::RateW | Entry::RateW4 | Entry::LatencyW | Entry::LatencyW4, true) => {
                &[("PACKED", 1.0)]
            }
            _ => &[],
        }
    }
}

/// The two-pass form of a byte op (see the module docs).
struct TwoPass {
    /// Pass A: kernel and threads.
    a: Entry,
    a_threads: u64,
    /// Scratch bytes written by pass A.
    scratch: u64,
    /// Pass B: kernel (`_w` or `_w4`), chunks per step row, and the chunk-index strides.
    b: Entry,
    chunks: u64,
    per_row: u64,
    b_words: u64,
    q_words: u64,
    t_out: u64,
}

/// A byte-producing encoding: output `total` bytes in outer slices of `m` bytes.
struct ByteOp {
    entry: Entry,
    total: u64,
    m: u64,
    /// Innermost extent (rate: features per sample; otherwise `m`).
    inner: u64,
    /// Input elements.
    n_in: u64,
    /// Input windowed by rows of `inner` elements (batch-major rate), else bound whole.
    row_window: bool,
    /// The op's fields of the job (geometry filled in per dispatch).
    base: Job,
    /// The two-pass form, when the layout allows it.
    two_pass: Option<TwoPass>,
}

/// Device buffers of one encoder.
#[derive(Debug)]
pub(crate) struct GpuEncoder {
    ctx: Arc<GpuContext>,
    jobs: Option<TrackedBuffer>,
    flags: TrackedBuffer,
    input: GrowBuffer,
    out: GrowBuffer,
    table: GrowBuffer,
    scratch: GrowBuffer,
    dev_out: Option<Arc<TrackedBuffer>>,
    /// Test hook: a smaller binding limit than the adapter's.
    pub binding_limit: Option<u64>,
}

impl GpuEncoder {
    pub fn new(ctx: &Arc<GpuContext>) -> Result<Self> {
        ctx.scoped(|| {
            // Compile the kernels now, so a broken backend fails at construction.
            for e in ENTRIES {
                ctx.pipeline(&ENCODERS, e.name(), &[], &LAYOUT)?;
            }
            let mut table = GrowBuffer::new("encoders-table");
            table.ensure(ctx, 16)?;
            Ok(GpuEncoder {
                ctx: ctx.clone(),
                jobs: None,
                flags: ctx.storage(16, "encoders-flags")?,
                input: GrowBuffer::new("encoders-input"),
                out: GrowBuffer::new("encoders-out"),
                table,
                scratch: GrowBuffer::new("encoders-scratch"),
                dev_out: None,
                binding_limit: None,
            })
        })
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Bytes one binding may hold.
    pub fn max_binding(&self) -> u64 {
        let l = self.ctx.max_binding();
        self.binding_limit.map_or(l, |b| b.min(l)) / 16 * 16
    }

    /// Largest buffer.
    pub fn max_buffer(&self) -> u64 {
        self.ctx.limits().max_buffer_size
    }

    /// Output bytes of one host piece (bounds the staging buffer).
    pub fn host_out_limit(&self) -> u64 {
        (self.max_buffer() / 2).min(256 << 20)
    }

    fn align(&self) -> u64 {
        (self.ctx.limits().min_storage_buffer_offset_alignment as u64).max(16)
    }

    /// Uploads the op's constant table (latency bounds, angle edges).
    pub fn set_table(&mut self, bytes: &[u8]) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            let buf = self.table.ensure(&ctx, bytes.len() as u64)?;
            write_padded(&ctx, &buf, 0, bytes);
            Ok(())
        })
    }

    /// The output buffer for a device result: the previous one if its caller let go of it.
    fn device_out(&mut self, bytes: u64) -> Result<Arc<TrackedBuffer>> {
        let need = bytes.max(16).next_multiple_of(16);
        if need > self.max_buffer() {
            return Err(Error::DeviceArray(format!(
                "an output of {bytes} bytes exceeds the device's largest buffer ({} bytes); \
                 encode the batch in parts",
                self.max_buffer()
            )));
        }
        reusable_output(&self.ctx, &mut self.dev_out, need, "encoders-out")
    }

    /// The dispatches of `op`: the two-pass kernels when they apply, else the word kernel
    /// over binding-sized windows.
    fn plan(&self, op: &ByteOp) -> Result<Vec<Dispatch>> {
        if op.total == 0 {
            return Ok(Vec::new());
        }
        if op.n_in >= u32::MAX as u64 {
            return Err(Error::shape(
                "input",
                "fewer than 2³² elements on the GPU engine",
                format!("{} elements", op.n_in),
            ));
        }
        let limit = self.max_binding();
        if let Some(tp) = &op.two_pass {
            let in_bytes = op.n_in * 4;
            let fits = op.total <= limit
                && in_bytes <= limit
                && tp.scratch <= limit
                && op.total < 1 << 32
                && tp.t_out.div_ceil(STEPS_PER_THREAD) <= MAX_GROUPS_PER_DIM as u64
                && tp.chunks.div_ceil(WG) <= MAX_GROUPS_PER_DIM as u64;
            if fits {
                let (f_magic, f_shift) = magic(tp.per_row.max(1) as u32);
                let packed = op.base.flags & 2 != 0;
                let a = Dispatch {
                    entry: tp.a,
                    packed: false,
                    job: Job {
                        n_cols: tp.a_threads as u32,
                        ..op.base
                    },
                    input: (Buf::Io, 0, in_bytes.max(4)),
                    out: (Buf::Scratch, 0, tp.scratch.next_multiple_of(16)),
                    groups: grid(tp.a_threads.div_ceil(WG) as u32),
                };
                let b = Dispatch {
                    entry: tp.b,
                    packed,
                    job: Job {
                        f_magic,
                        f_shift,
                        inner: tp.per_row as u32,
                        n_cols: tp.chunks as u32,
                        b_words: tp.b_words as u32,
                        q_words: tp.q_words as u32,
                        t_out: tp.t_out as u32,
                        ..op.base
                    },
                    input: (Buf::Scratch, 0, tp.scratch.next_multiple_of(16)),
                    out: (Buf::Io, 0, op.total.next_multiple_of(16)),
                    groups: (
                        tp.chunks.div_ceil(WG) as u32,
                        tp.t_out.div_ceil(STEPS_PER_THREAD) as u32,
                        1,
                    ),
                };
                return Ok(vec![a, b]);
            }
        }
        self.windows(op)
    }

    /// The word-kernel windows of `op` (non-empty output).
    fn windows(&self, op: &ByteOp) -> Result<Vec<Dispatch>> {
        if op.m > MAX_SLICE {
            return Err(Error::shape(
                "output",
                "slices (one sample's raster, or one time step) of at most 2³⁰ bytes on the GPU engine",
                format!("{} bytes", op.m),
            ));
        }
        let align = self.align();
        let limit = self.max_binding();
        let mut win = limit.min(MAX_JOB_BYTES) / align * align;
        let in_bytes = op.n_in * 4;
        if op.row_window {
            let row = op.inner * 4;
            let rows = limit.saturating_sub(align) / row.max(1);
            if rows < 3 {
                return Err(Error::shape(
                    "input",
                    format!("rows of at most {} features on this device", limit / 12),
                    format!("{} features", op.inner),
                ));
            }
            win = win.min((rows - 2) * op.m / align * align);
        } else if in_bytes > limit {
            return Err(Error::DeviceArray(format!(
                "an input of {in_bytes} bytes exceeds one storage binding ({limit} bytes); \
                 encode it in parts"
            )));
        }
        if win == 0 {
            return Err(Error::shape(
                "input",
                "a row that fits one storage binding",
                format!("{} features", op.inner),
            ));
        }
        let (m_magic, m_shift) = magic(op.m as u32);
        let (f_magic, f_shift) = magic(op.inner.max(1) as u32);
        let mut out = Vec::new();
        let mut s = 0u64;
        while s < op.total {
            let e = (s + win).min(op.total);
            let n = e - s;
            let (o0, m0) = (s / op.m, s % op.m);
            let (in_off, in_len) = if op.row_window {
                let last = (e - 1) / op.m;
                let start = (o0 * op.inner * 4) / align * align;
                (start, (last + 1) * op.inner * 4 - start)
            } else {
                (0, in_bytes)
            };
            let job = Job {
                m_magic,
                m_shift,
                f_magic,
                f_shift,
                n_bytes: n as u32,
                o0: o0 as u32,
                m0: m0 as u32,
                big_m: op.m as u32,
                inner: op.inner as u32,
                q_len: (op.m / op.inner.max(1)) as u32,
                in_shift: (in_off / 4) as u32,
                ..op.base
            };
            out.push(Dispatch {
                entry: op.entry,
                packed: false,
                job,
                input: (Buf::Io, in_off, in_len.max(4)),
                out: (Buf::Io, s, n.next_multiple_of(4)),
                groups: grid(n.div_ceil(4).div_ceil(WG) as u32),
            });
            s = e;
        }
        Ok(out)
    }

    /// Records `dispatches` into an encoder (one compute pass), resetting the non-finite flag
    /// first. `Buf::Io` binds `input` / `out`.
    fn record(
        &mut self,
        dispatches: &[Dispatch],
        input: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<wgpu::CommandEncoder> {
        let ctx = self.ctx.clone();
        ctx.queue
            .write_buffer(&self.flags, 0, bytemuck::cast_slice(&[NONE_BAD; 4]));
        let mut enc = ctx.encoder();
        if dispatches.is_empty() {
            return Ok(enc);
        }
        let stride = (std::mem::size_of::<Job>() as u64)
            .next_multiple_of((ctx.limits().min_uniform_buffer_offset_alignment as u64).max(16));
        let need = stride * dispatches.len() as u64;
        let jobs = &grow_slot(&mut self.jobs, need, || {
            ctx.uniform(need.next_power_of_two().max(256), "encoders-jobs")
        })?;
        let mut bytes = vec![0u8; need as usize];
        for (k, d) in dispatches.iter().enumerate() {
            let at = k * stride as usize;
            bytes[at..at + std::mem::size_of::<Job>()].copy_from_slice(bytemuck::bytes_of(&d.job));
        }
        ctx.queue.write_buffer(jobs, 0, &bytes);
        let scratch_need = dispatches
            .iter()
            .flat_map(|d| [d.input, d.out])
            .filter(|b| b.0 == Buf::Scratch)
            .map(|b| b.1 + b.2)
            .max()
            .unwrap_or(0);
        let scratch = self.scratch.ensure(&ctx, scratch_need)?;
        let table = self.table.ensure(&ctx, 16)?;
        let pick = |b: Buf, io: &wgpu::Buffer| -> wgpu::Buffer {
            match b {
                Buf::Io => io.clone(),
                Buf::Scratch => scratch.clone(),
            }
        };
        let mut groups = Vec::with_capacity(dispatches.len());
        for (k, d) in dispatches.iter().enumerate() {
            let pipe = ctx.pipeline(&ENCODERS, d.entry.name(), d.constants(), &LAYOUT)?;
            let inb = pick(d.input.0, input);
            let outb = pick(d.out.0, out);
            let bg = ctx.bind(
                &pipe,
                &[
                    sized(jobs, k as u64 * stride, std::mem::size_of::<Job>() as u64),
                    sized(&inb, d.input.1, d.input.2),
                    table.as_entire_binding(),
                    sized(&outb, d.out.1, d.out.2),
                    self.flags.as_entire_binding(),
                ],
            );
            groups.push((pipe, bg));
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for (d, (pipe, bg)) in dispatches.iter().zip(&groups) {
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, bg, &[]);
                let (x, y, z) = d.groups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
        Ok(enc)
    }

    /// Runs `op` on host input `x` and returns the output bytes.
    fn run_host(&mut self, op: &ByteOp, x: &[f32], row: usize) -> Result<Vec<u8>> {
        let dispatches = self.plan(op)?;
        if dispatches.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.ctx.clone();
        let bytes = ctx.scoped(|| {
            let input = self.input.ensure(&ctx, (x.len() * 4) as u64)?;
            write_padded(&ctx, &input, 0, bytemuck::cast_slice(x));
            let out = self.out.ensure(&ctx, op.total)?;
            let enc = self.record(&dispatches, &input, &out)?;
            ctx.submit_and_read(enc, &[(&out, 0, op.total), (&self.flags, 0, 4)])
        })?;
        let n = op.total as usize;
        let bad = u32::from_le_bytes([bytes[n], bytes[n + 1], bytes[n + 2], bytes[n + 3]]);
        if bad != NONE_BAD {
            let i = bad as usize;
            return Err(non_finite(i, row, x.get(i).copied().unwrap_or(f32::NAN)));
        }
        let mut bytes = bytes;
        bytes.truncate(n);
        Ok(bytes)
    }

    /// Runs `op` on device input `x` into a (reused) device buffer.
    fn run_device(
        &mut self,
        op: &ByteOp,
        x: &DeviceArray,
        row: usize,
        shape: Vec<usize>,
    ) -> Result<DeviceArray> {
        let dispatches = self.plan(op)?;
        let ctx = self.ctx.clone();
        let out = self.device_out(op.total)?;
        let flag = ctx.scoped(|| {
            let enc = self.record(&dispatches, x.buffer(), &out)?;
            ctx.submit_and_read(enc, &[(&self.flags, 0, 4)])
        })?;
        let bad = u32::from_le_bytes([flag[0], flag[1], flag[2], flag[3]]);
        if bad != NONE_BAD {
            let v = ctx.scoped(|| {
                ctx.submit_and_read(ctx.encoder(), &[(x.buffer(), bad as u64 * 4, 4)])
            })?;
            let value = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            return Err(non_finite(bad as usize, row, value));
        }
        Ok(DeviceArray::from_buffer(&self.ctx, out, shape, DType::U8))
    }

    fn rate_op(p: &RateParams, b: usize, f: usize, first: u64) -> ByteOp {
        let t_n = p.steps as u64;
        let t_out = if p.packed { t_n.div_ceil(8) } else { t_n };
        let (b, f) = (b as u64, f as u64);
        let m = if p.time_major { b * f } else { t_out * f };
        let two_pass = (f % 4 == 0 && f > 0).then(|| {
            // Chunks of 16 bytes when rows allow, else words.
            let (entry, per) = if f % 16 == 0 {
                (Entry::RateW4, 16)
            } else {
                (Entry::RateW, 4)
            };
            let fc = f / per;
            TwoPass {
                a: Entry::RateThr,
                a_threads: b * f,
                scratch: b * f * 4,
                b: entry,
                chunks: b * fc,
                per_row: fc,
                b_words: if p.time_major { fc } else { t_out * fc },
                q_words: if p.time_major { b * fc } else { fc },
                t_out,
            }
        });
        ByteOp {
            two_pass,
            entry: Entry::Rate,
            total: b * f * t_out,
            m,
            inner: f,
            n_in: b * f,
            row_window: !p.time_major,
            base: Job {
                steps: p.steps,
                pos_lo: first as u32,
                pos_hi: (first >> 32) as u32,
                key_lo: p.key[0],
                key_hi: p.key[1],
                flags: p.time_major as u32 | (p.packed as u32) << 1,
                max_r: p.max_r,
                x_cap: p.x_cap,
                ..Job::default()
            },
        }
    }

    pub fn rate_host(
        &mut self,
        p: &RateParams,
        x: &[f32],
        b: usize,
        f: usize,
        first: u64,
    ) -> Result<Vec<u8>> {
        let op = Self::rate_op(p, b, f, first);
        self.run_host(&op, x, f)
    }

    pub fn rate_device(
        &mut self,
        p: &RateParams,
        x: &DeviceArray,
        b: usize,
        f: usize,
        first: u64,
        shape: Vec<usize>,
    ) -> Result<DeviceArray> {
        let op = Self::rate_op(p, b, f, first);
        self.run_device(&op, x, f, shape)
    }

    fn latency_op(p: &LatencyParams, e: usize, t_out: usize) -> ByteOp {
        let e = e as u64;
        let t_out = t_out as u64;
        let two_pass = (e.is_multiple_of(4) && p.steps <= MAX_BYTE_STEPS).then(|| {
            let (entry, per) = if e.is_multiple_of(16) {
                (Entry::LatencyW4, 16)
            } else {
                (Entry::LatencyW, 4)
            };
            TwoPass {
                a: Entry::LatencyTs,
                a_threads: e / 4,
                scratch: e,
                b: entry,
                chunks: e / per,
                per_row: 1,
                b_words: 0,
                q_words: e / per,
                t_out,
            }
        });
        ByteOp {
            two_pass,
            entry: Entry::Latency,
            total: e * t_out,
            m: e,
            inner: e,
            n_in: e,
            row_window: false,
            base: Job {
                steps: p.steps,
                flags: (p.packed as u32) << 1,
                threshold: p.threshold,
                ..Job::default()
            },
        }
    }

    pub fn latency_host(&mut self, p: &LatencyParams, x: &[f32], t_out: usize) -> Result<Vec<u8>> {
        let op = Self::latency_op(p, x.len(), t_out);
        self.run_host(&op, x, 1)
    }

    pub fn latency_device(
        &mut self,
        p: &LatencyParams,
        x: &DeviceArray,
        t_out: usize,
        row: usize,
        shape: Vec<usize>,
    ) -> Result<DeviceArray> {
        let op = Self::latency_op(p, x.len(), t_out);
        self.run_device(&op, x, row, shape)
    }

    fn angle_op(e: usize, n: usize, n_edges: usize) -> ByteOp {
        let (e, n) = (e as u64, n as u64);
        ByteOp {
            two_pass: None,
            entry: Entry::Angle,
            total: e * n,
            m: n,
            inner: n,
            n_in: e,
            row_window: false,
            base: Job {
                n_edges: n_edges as u32,
                ..Job::default()
            },
        }
    }

    pub fn angle_host(&mut self, x: &[f32], n: usize, n_edges: usize) -> Result<Vec<u8>> {
        let op = Self::angle_op(x.len(), n, n_edges);
        self.run_host(&op, x, 1)
    }

    pub fn angle_device(
        &mut self,
        x: &DeviceArray,
        n: usize,
        n_edges: usize,
        row: usize,
        shape: Vec<usize>,
    ) -> Result<DeviceArray> {
        let op = Self::angle_op(x.len(), n, n_edges);
        self.run_device(&op, x, row, shape)
    }

    /// The shift dispatch and table of `plan` for elements of `elem` bytes (`total` elements).
    fn shift_dispatch(&mut self, plan: &ShiftPlan, elem: usize, total: usize) -> Result<Dispatch> {
        let bytes = (total * elem) as u64;
        let limit = self.max_binding();
        if bytes > limit || total >= 1 << 31 {
            return Err(Error::DeviceArray(format!(
                "shift of {bytes} bytes exceeds one storage binding ({limit} bytes) on the \
                 GPU engine; shift it in parts"
            )));
        }
        let (dims, strides) = if plan.dims.is_empty() {
            (vec![1], vec![1])
        } else {
            (plan.dims.clone(), plan.strides())
        };
        let rank = dims.len();
        let mut table: Vec<u32> = Vec::with_capacity(5 * rank + plan.shifts.len());
        table.extend(dims.iter().map(|&d| d as u32));
        table.extend(strides.iter().map(|&s| s as u32));
        table.extend((0..rank).map(|d| {
            plan.slots
                .get(d)
                .copied()
                .flatten()
                .map_or(u32::MAX, |s| s as u32)
        }));
        table.extend(dims.iter().map(|&d| magic(d.max(1) as u32).0));
        table.extend(dims.iter().map(|&d| magic(d.max(1) as u32).1));
        table.extend(plan.shifts.iter().map(|&s| s as u32));
        self.set_table(bytemuck::cast_slice(&table))?;
        let entry = if elem == 1 {
            Entry::Shift8
        } else {
            Entry::Shift32
        };
        let threads = if elem == 1 { total.div_ceil(4) } else { total } as u64;
        let (f_magic, f_shift) = magic(strides[0].max(1) as u32);
        let job = Job {
            f_magic,
            f_shift,
            n_bytes: total as u32,
            inner: strides[0] as u32,
            flags: (plan.per_sample as u32) << 2,
            rank: rank as u32,
            n_axes: plan.n_axes as u32,
            ..Job::default()
        };
        let len = bytes.next_multiple_of(4).max(4);
        Ok(Dispatch {
            entry,
            packed: false,
            job,
            input: (Buf::Io, 0, len),
            out: (Buf::Io, 0, len),
            groups: grid(threads.div_ceil(WG) as u32),
        })
    }

    pub fn shift_host(&mut self, plan: &ShiftPlan, data: &[u8], dtype: DType) -> Result<Vec<u8>> {
        let elem = dtype.size();
        let total = data.len() / elem;
        if total == 0 {
            return Ok(Vec::new());
        }
        let d = self.shift_dispatch(plan, elem, total)?;
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            let input = self.input.ensure(&ctx, data.len() as u64)?;
            write_padded(&ctx, &input, 0, data);
            let out = self.out.ensure(&ctx, data.len() as u64)?;
            let enc = self.record(std::slice::from_ref(&d), &input, &out)?;
            ctx.submit_and_read(enc, &[(&out, 0, data.len() as u64)])
        })
    }

    pub fn shift_device(&mut self, plan: &ShiftPlan, x: &DeviceArray) -> Result<DeviceArray> {
        let elem = x.dtype().size();
        let total = x.len();
        let out = self.device_out(x.byte_len())?;
        if total > 0 {
            let d = self.shift_dispatch(plan, elem, total)?;
            let ctx = self.ctx.clone();
            ctx.scoped(|| {
                let enc = self.record(std::slice::from_ref(&d), x.buffer(), &out)?;
                ctx.submit_and_read(enc, &[])
            })?;
        }
        Ok(DeviceArray::from_buffer(
            &self.ctx,
            out,
            x.shape().to_vec(),
            x.dtype(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn div(n: u32, d: u32) -> u32 {
        let (m, s) = magic(d);
        if m == 0 {
            n
        } else {
            (((n as u64 * m as u64) >> 32) as u32) >> s
        }
    }

    #[test]
    fn reciprocal_division_is_exact_for_31_bit_numerators() {
        let mut x = 0x9E37_79B9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut ds: Vec<u32> = vec![1, 2, 3, 5, 7, 10, 64, 100, 784, 1000, 4096, 65_535];
        ds.extend([
            (1 << 30) - 1,
            1 << 30,
            (1 << 30) + 1,
            (1 << 31) - 1,
            1 << 31,
        ]);
        ds.extend((0..200).map(|_| next() >> (next() % 31)).filter(|&d| d > 0));
        for d in ds {
            let mut ns: Vec<u32> = vec![0, 1, d - 1, d, d.wrapping_add(1), (1 << 31) - 1];
            let top = ((1u32 << 31) - 1) / d * d;
            ns.extend([top, top.wrapping_sub(1), top.wrapping_sub(d)]);
            ns.extend((0..300).map(|_| next() >> 1));
            for n in ns.into_iter().filter(|&n| n < 1 << 31) {
                assert_eq!(div(n, d), n / d, "{n} / {d}");
            }
        }
    }

    #[test]
    fn job_matches_the_shader_struct_size() {
        // 32 words, as the shader's `Job` (a multiple of 16 bytes).
        assert_eq!(std::mem::size_of::<Job>(), 128);
    }
}
