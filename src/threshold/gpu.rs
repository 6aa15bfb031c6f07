//! GPU half of threshold crossing: buffers, dispatch and read-back around
//! `shaders/threshold.wgsl` (entry `detect`).
//!
//! Per chunk: one uniform write, one encoder, one dispatch per piece of at most
//! [`MAX_ROWS_PER_DISPATCH`] rows (the loop bound; a single piece for chunks up to 0.5 s at
//! 30 kHz), one submit and one small read-back (the per-channel event counts and a status
//! word; the event slots too when the caller wants host events). The state lives in three buffers: the committed one is only
//! read; a chunk writes another (pieces of a split chunk alternate between the two others),
//! and the committed index moves only once the chunk is accepted.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::ArrayView2;

use super::{comparison_value, ChannelState, Params};
use crate::error::{Error, Result};
use crate::events::{DeviceEvents, Event};
use crate::gpu::{
    align_step, bind, check_context, grid, non_finite_row, read_with_status, record_pass,
    reusable_output, rows_per_piece, upload_chunk, write_padded, Binding, DeviceArray, GpuContext,
    GrowBuffer, ParamsBuffer, Staged, TrackedBuffer,
};
use crate::shaders::THRESHOLD;

/// Invocations per workgroup (one per channel).
const WG_SIZE: u32 = 64;

/// Group 0 of `detect`: params, samples, thresholds, state in, state out, slots, counts,
/// status.
const LAYOUT: [Binding; 8] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Bytes of one channel's `State` in the shader.
const STATE_BYTES: u64 = 32;

/// The shader's `State` flags and its "no event yet" `since`.
const FLAG_STARTED: u32 = 1;
const FLAG_PREV_OVER: u32 = 2;
const FLAG_OPEN: u32 = 4;
const SINCE_NEVER: u32 = u32::MAX;

/// Bytes of one event slot (`vec2<u32>`).
const SLOT_BYTES: u64 = 8;

/// Most rows one dispatch walks: the kernel's only loop runs once per row, so this is also
/// the most loop iterations any invocation runs. Mesa's llvmpipe (lavapipe and GL) silently
/// stops an invocation after 65 535 loop iterations in total (its loop limiter), which would
/// lose every event past that row; this stays 4× below. Longer chunks become several
/// dispatches in one compute pass, chaining the state through the state buffers.
const MAX_ROWS_PER_DISPATCH: u64 = 16_384;

/// Slots per channel tried first.
const INITIAL_CAPACITY: u32 = 16;

/// The shader's `Params` (one per dispatch).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct DispatchParams {
    n_channels: u32,
    c0: u32,
    group_channels: u32,
    rows: u32,
    row0: u32,
    capacity: u32,
    pad: u32,
    refrac: u32,
    max_width: u32,
    min_width: u32,
    alpha: f32,
    one_minus_alpha: f32,
}

/// The shader's initial `State` (no previous sample, no event yet).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct InitState {
    flags: u32,
    since: u32,
    run: u32,
    peak_off: u32,
    peak_val: f32,
    mean: f32,
    variance: f32,
    pad: u32,
}

/// What one accepted run of a chunk gives back.
struct RunOut {
    counts: Vec<u32>,
    capacity: u32,
    slots: Option<Vec<u8>>,
}

/// GPU streaming state of one [`super::ThresholdCrossing`].
pub(crate) struct GpuThreshold {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    /// The `MODE` the pipeline was compiled for (every call passes the operator's own params).
    mode: u32,
    /// State buffers (`STATE_BYTES` per channel); `states[committed]` is the accepted state.
    states: Vec<TrackedBuffer>,
    committed: usize,
    /// Channel count the state and thresholds were initialised for.
    init_for: Option<usize>,
    thresholds: Option<TrackedBuffer>,
    /// Upload buffer for host chunks.
    input: GrowBuffer,
    /// Uniform buffer of the dispatches' params.
    params: ParamsBuffer,
    /// One status word.
    status: TrackedBuffer,
    /// Event slots and counts, reused while no [`DeviceEvents`] still holds them.
    slots: Option<Arc<TrackedBuffer>>,
    counts: Option<Arc<TrackedBuffer>>,
    /// Slots per channel to try first (grows to the largest count seen).
    cap_hint: u32,
    /// Test knob: cap on one binding's bytes.
    binding_limit: Option<u64>,
}

impl std::fmt::Debug for GpuThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuThreshold")
            .field("ctx", &self.ctx)
            .field("committed", &self.committed)
            .field("init_for", &self.init_for)
            .field("cap_hint", &self.cap_hint)
            .finish()
    }
}

/// Most events one channel can emit in a chunk of `n` samples: a crossing needs a sample not
/// over threshold before it, so at most `⌈n/2⌉`, plus one event held from earlier chunks.
fn max_events(n: usize) -> u32 {
    (n.div_ceil(2) + 1).min(u32::MAX as usize) as u32
}

/// The shader's `MODE` override for `p`.
fn mode_bits(p: &Params) -> u32 {
    let mut mode = 0u32;
    if p.peak_mode {
        mode |= 1;
    }
    if p.align {
        mode |= 2;
    }
    if p.return_val {
        mode |= 4;
    }
    if p.alpha > 0.0 {
        mode |= 8;
    }
    mode
}

impl GpuThreshold {
    /// The committed state copy and the channel count it was set up for.
    pub(crate) fn mark(&self) -> (usize, Option<usize>) {
        (self.committed, self.init_for)
    }

    /// Back to what [`GpuThreshold::mark`] returned (before the chunk since).
    pub(crate) fn rewind(&mut self, (committed, init_for): (usize, Option<usize>)) {
        self.committed = committed;
        self.init_for = init_for;
    }

    /// The pipeline is compiled for `p`'s mode (the operator's settings do not change).
    pub(crate) fn new(ctx: &Arc<GpuContext>, p: &Params) -> Result<Self> {
        let mode = mode_bits(p);
        let pipeline = ctx.pipeline(
            &THRESHOLD,
            "detect",
            &[("WG_SIZE", WG_SIZE as f64), ("MODE", mode as f64)],
            &LAYOUT,
        )?;
        let status = ctx.scoped(|| ctx.storage(16, "neurokernels.threshold.status"))?;
        Ok(GpuThreshold {
            ctx: ctx.clone(),
            pipeline,
            mode,
            states: Vec::new(),
            committed: 0,
            init_for: None,
            thresholds: None,
            input: GrowBuffer::new("neurokernels.threshold.input"),
            params: ParamsBuffer::new("neurokernels.threshold.params"),
            status,
            slots: None,
            counts: None,
            cap_hint: INITIAL_CAPACITY,
            binding_limit: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.init_for = None;
    }

    /// Every channel's committed state in the common form, the next sample being `pos`
    /// (the initial state when the buffers are not set up for `nc` channels).
    pub(crate) fn read_state(&self, nc: usize, pos: u64) -> Result<Vec<ChannelState>> {
        if self.init_for != Some(nc) {
            return Ok(vec![ChannelState::default(); nc]);
        }
        let ctx = &self.ctx;
        let bytes = ctx.scoped(|| {
            ctx.submit_and_read(
                ctx.encoder(),
                &[(&self.states[self.committed], 0, nc as u64 * STATE_BYTES)],
            )
        })?;
        let raw: Vec<InitState> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(raw
            .iter()
            .map(|st| ChannelState {
                prev_over: st.flags & FLAG_PREV_OVER != 0,
                open: st.flags & FLAG_OPEN != 0,
                run: st.run as u64,
                peak_off: st.peak_off as u64,
                peak_val: st.peak_val,
                last: match st.since {
                    SINCE_NEVER => None,
                    since => pos.checked_sub(1 + since as u64),
                },
                mean: st.mean as f64,
                var: st.variance as f64,
            })
            .collect())
    }

    /// Makes `channels` (checked by the caller) the committed state, with thresholds `thr`,
    /// the next sample being `pos`; `started` when the stream has had a sample.
    ///
    /// # Errors
    /// [`Error::State`] for statistics beyond `f32` and [`Error::Shape`] for more channels
    /// than the adapter holds, both before any change; GPU errors of the upload.
    pub(crate) fn write_state(
        &mut self,
        thr: &[f64],
        pos: u64,
        started: bool,
        channels: &[ChannelState],
    ) -> Result<()> {
        let mut raw = Vec::with_capacity(channels.len());
        for (c, ch) in channels.iter().enumerate() {
            let (mean, variance) = (ch.mean as f32, ch.var as f32);
            if !(mean.is_finite() && variance.is_finite()) {
                return Err(Error::State(format!(
                    "running statistics of channel {c} do not fit the GPU's f32"
                )));
            }
            let flags = if started { FLAG_STARTED } else { 0 }
                | if ch.prev_over { FLAG_PREV_OVER } else { 0 }
                | if ch.open { FLAG_OPEN } else { 0 };
            raw.push(InitState {
                flags,
                since: ch.last.map_or(SINCE_NEVER, |l| {
                    (pos - 1 - l).min(SINCE_NEVER as u64) as u32
                }),
                run: ch.run as u32,
                peak_off: ch.peak_off as u32,
                peak_val: ch.peak_val,
                mean,
                variance,
                pad: 0,
            });
        }
        self.init(channels.len(), thr)?;
        write_padded(
            &self.ctx,
            &self.states[self.committed],
            0,
            bytemuck::cast_slice(&raw),
        );
        Ok(())
    }

    pub(crate) fn set_binding_limit(&mut self, bytes: Option<u64>) {
        self.binding_limit = bytes;
    }

    /// (Re)creates the state and threshold buffers for `nc` channels and queues the initial
    /// state into the committed buffer. Queued writes run before the chunk's commands.
    fn init(&mut self, nc: usize, thr: &[f64]) -> Result<()> {
        let ctx = self.ctx.clone();
        let bytes = nc as u64 * STATE_BYTES;
        if bytes > ctx.max_binding() {
            return Err(Error::shape(
                "chunk",
                format!(
                    "at most {} channels on this adapter",
                    ctx.max_binding() / STATE_BYTES
                ),
                format!("{nc} channels"),
            ));
        }
        ctx.scoped(|| {
            if self.states.len() != 3 || self.states[0].size() < bytes {
                self.states = (0..3)
                    .map(|_| ctx.storage(bytes, "neurokernels.threshold.state"))
                    .collect::<Result<_>>()?;
            }
            self.committed = 0;
            let init = vec![
                InitState {
                    flags: 0,
                    since: u32::MAX,
                    run: 0,
                    peak_off: 0,
                    peak_val: 0.0,
                    mean: 0.0,
                    variance: 0.0,
                    pad: 0,
                };
                nc
            ];
            write_padded(&ctx, &self.states[0], 0, bytemuck::cast_slice(&init));
            let tv: Vec<[f32; 2]> = thr
                .iter()
                .map(|&t| {
                    let (v, dir) = comparison_value(t);
                    [v, dir]
                })
                .collect();
            let tb = ctx.storage(nc as u64 * 8, "neurokernels.threshold.thresholds")?;
            write_padded(&ctx, &tb, 0, bytemuck::cast_slice(&tv));
            self.thresholds = Some(tb);
            Ok(())
        })?;
        self.init_for = Some(nc);
        Ok(())
    }

    /// Runs the chunk in `input` (`n × nc` f32, already on the device) from the committed
    /// state until no channel overflows its slots, then commits. `read_slots` also reads the
    /// slots back.
    fn run(
        &mut self,
        p: &Params,
        thr: &[f64],
        input: &wgpu::Buffer,
        n: usize,
        nc: usize,
        read_slots: bool,
    ) -> Result<RunOut> {
        if self.init_for != Some(nc) {
            self.init(nc, thr)?;
        }
        let bound = max_events(n);
        let mut cap = self.cap_hint.min(bound).max(1);
        loop {
            let (next, enc) = self.record_once(p, input, n, nc, cap)?;
            let (counts, status, slots) = self.read_pass(enc, nc, cap, read_slots)?;
            if status != 0 {
                let row = !status as usize;
                return Err(self.non_finite(input, row, nc));
            }
            let max = counts.iter().copied().max().unwrap_or(0);
            if max > cap {
                cap = max.next_power_of_two().min(bound).max(max);
                self.cap_hint = self.cap_hint.max(cap);
                continue;
            }
            self.committed = next;
            return Ok(RunOut {
                counts,
                capacity: cap,
                slots,
            });
        }
    }

    /// The error for the first non-finite sample of row `row` (found by the device).
    fn non_finite(&self, input: &wgpu::Buffer, row: usize, nc: usize) -> Error {
        self.ctx
            .scoped(|| Ok(non_finite_row(&self.ctx, input, row, nc)))
            .unwrap_or_else(|e| e)
    }

    /// Submits one recorded pass with `cap` slots per channel and reads back the counts, the
    /// status word and (when asked) the slots' bytes.
    fn read_pass(
        &self,
        enc: wgpu::CommandEncoder,
        nc: usize,
        cap: u32,
        read_slots: bool,
    ) -> Result<(Vec<u32>, u32, Option<Vec<u8>>)> {
        let (Some(slots), Some(counts)) = (&self.slots, &self.counts) else {
            return Err(Error::Validation(
                "event buffers missing after a run".into(),
            ));
        };
        let slots_bytes = nc as u64 * cap as u64 * SLOT_BYTES;
        let mut reads: Vec<(&wgpu::Buffer, u64, u64)> = vec![(counts, 0, nc as u64 * 4)];
        if read_slots {
            reads.push((slots, 0, slots_bytes));
        }
        let (status, mut bytes) = self
            .ctx
            .scoped(|| read_with_status(&self.ctx, enc, &self.status, &reads))?;
        let cb = nc * 4;
        let slot_bytes = read_slots.then(|| bytes.split_off(cb));
        let counts_v: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[..cb]);
        Ok((counts_v, status, slot_bytes))
    }

    /// Records one pass over the chunk with `cap` slots per channel; returns the state index
    /// it writes last and the commands.
    fn record_once(
        &mut self,
        p: &Params,
        input: &wgpu::Buffer,
        n: usize,
        nc: usize,
        cap: u32,
    ) -> Result<(usize, wgpu::CommandEncoder)> {
        debug_assert_eq!(mode_bits(p), self.mode, "params of another operator");
        let ctx = self.ctx.clone();
        let limits = ctx.limits();
        let a_s = limits.min_storage_buffer_offset_alignment as u64;
        let max_b = self
            .binding_limit
            .unwrap_or(u64::MAX)
            .min(ctx.max_binding());

        // Row pieces: each binds whole rows, at an offset the device accepts.
        let row_bytes = nc as u64 * 4;
        let row_step = align_step(a_s, row_bytes);
        // ... and at most `MAX_ROWS_PER_DISPATCH` rows, so that no invocation runs more loop
        // iterations than llvmpipe allows (see the constant). `row_step` divides it: both are
        // powers of two and `row_step ≤ 64` (WebGPU caps the offset alignment at 256 bytes);
        // the rounding up to one step only guards against an adapter breaking that cap.
        let rows_per = rows_per_piece(max_b, row_bytes, row_step, MAX_ROWS_PER_DISPATCH);
        if rows_per == 0 {
            return Err(Error::shape(
                "chunk",
                format!(
                    "rows of at most {} channels on this adapter",
                    max_b / (4 * row_step)
                ),
                format!("{nc} channels"),
            ));
        }
        // Channel groups: each binds its channels' slots.
        let ch_bytes = cap as u64 * SLOT_BYTES;
        let ch_step = align_step(a_s, ch_bytes);
        let ch_per = max_b / ch_bytes / ch_step * ch_step;
        if ch_per == 0 {
            return Err(Error::OutOfMemory(format!(
                "{cap} event slots per channel do not fit one binding of {max_b} bytes"
            )));
        }
        let slots_bytes = nc as u64 * ch_bytes;
        if slots_bytes > limits.max_buffer_size {
            return Err(Error::OutOfMemory(format!(
                "{slots_bytes} bytes of event slots exceed the device's buffer size"
            )));
        }

        let mut dispatches = Vec::new(); // (params, row0, rows, c0, group)
        let n64 = n as u64;
        let mut row0 = 0u64;
        loop {
            let rows = rows_per.min(n64 - row0);
            let mut c0 = 0u64;
            while c0 < nc as u64 {
                let group = ch_per.min(nc as u64 - c0);
                dispatches.push((
                    DispatchParams {
                        n_channels: nc as u32,
                        c0: c0 as u32,
                        group_channels: group as u32,
                        rows: rows as u32,
                        row0: row0 as u32,
                        capacity: cap,
                        pad: 0,
                        refrac: p.refrac as u32,
                        max_width: p.max_width as u32,
                        min_width: p.min_width as u32,
                        alpha: p.alpha as f32,
                        one_minus_alpha: p.one_minus_alpha as f32,
                    },
                    row0,
                    rows,
                    c0,
                    group,
                ));
                c0 += group;
            }
            row0 += rows;
            if row0 >= n64 {
                break;
            }
        }

        ctx.scoped(|| {
            // Params, one per dispatch, at uniform-offset-aligned strides.
            let params: Vec<DispatchParams> = dispatches.iter().map(|d| d.0).collect();
            let params = self.params.write(&ctx, &params)?;

            let slots = reusable_output(
                &ctx,
                &mut self.slots,
                slots_bytes,
                "neurokernels.threshold.slots",
            )?;
            let counts = reusable_output(
                &ctx,
                &mut self.counts,
                nc as u64 * 4,
                "neurokernels.threshold.counts",
            )?;
            let thresholds = self
                .thresholds
                .as_ref()
                .ok_or_else(|| Error::Validation("thresholds not initialised".into()))?;

            let scratch = [(self.committed + 1) % 3, (self.committed + 2) % 3];
            let mut state_in = self.committed;
            let mut state_out = scratch[0];
            let mut piece_row0 = 0u64;
            let mut groups = Vec::with_capacity(dispatches.len());
            for (k, d) in dispatches.iter().enumerate() {
                let (_, r0, rows, c0, group) = *d;
                if r0 != piece_row0 {
                    // Next row piece: it reads what the previous one wrote.
                    piece_row0 = r0;
                    state_in = state_out;
                    state_out = if state_out == scratch[0] {
                        scratch[1]
                    } else {
                        scratch[0]
                    };
                }
                let in_size = (rows * row_bytes).max(4).min(input.size() - r0 * row_bytes);
                let bg = ctx.bind(
                    &self.pipeline,
                    &[
                        params.binding(k),
                        bind(input, r0 * row_bytes, in_size),
                        thresholds.as_entire_binding(),
                        self.states[state_in].as_entire_binding(),
                        self.states[state_out].as_entire_binding(),
                        bind(&slots, c0 * ch_bytes, group * ch_bytes),
                        counts.as_entire_binding(),
                        self.status.as_entire_binding(),
                    ],
                );
                groups.push((bg, group));
            }
            let record = |pass: &mut wgpu::ComputePass<'_>| {
                pass.set_pipeline(&self.pipeline);
                for (bg, group) in &groups {
                    pass.set_bind_group(0, bg, &[]);
                    let (x, y, z) = grid((*group as u32).div_ceil(WG_SIZE));
                    pass.dispatch_workgroups(x, y, z);
                }
            };
            let enc = record_pass(&ctx, &self.status, "neurokernels.threshold.detect", record);
            Ok((state_out, enc))
        })
    }

    /// A host chunk: upload, run, read the events back.
    pub(crate) fn process_host(
        &mut self,
        p: &Params,
        thr: &[f64],
        chunk: ArrayView2<'_, f32>,
        start: u64,
    ) -> Result<Vec<Event>> {
        let (n, nc) = chunk.dim();
        let ctx = self.ctx.clone();
        let buf = upload_chunk(&ctx, &mut self.input, chunk)?;
        let out = self.run(p, thr, &buf, n, nc, true);
        let out = out?;
        let slots = out.slots.unwrap_or_default();
        Ok(decode(&out.counts, out.capacity, &slots, start))
    }

    /// A device chunk: run, leave the events on the device.
    pub(crate) fn process_device(
        &mut self,
        p: &Params,
        thr: &[f64],
        chunk: &DeviceArray,
        start: u64,
    ) -> Result<DeviceEvents> {
        check_context(&self.ctx, chunk)?;
        let shape = chunk.shape();
        let (n, nc) = (shape[0], shape[1]);
        let buffer = chunk.buffer.clone();
        let out = self.run(p, thr, &buffer, n, nc, false)?;
        self.device_events(out.capacity, nc, start, n)
    }

    /// The events of the last pass, left in the slot and count buffers, as device events of
    /// the chunk of `n` samples from `start`.
    fn device_events(
        &self,
        capacity: u32,
        nc: usize,
        start: u64,
        n: usize,
    ) -> Result<DeviceEvents> {
        let (Some(slots), Some(counts)) = (self.slots.clone(), self.counts.clone()) else {
            return Err(Error::Validation(
                "event buffers missing after a run".into(),
            ));
        };
        Ok(DeviceEvents {
            slots,
            counts,
            capacity,
            n_channels: nc,
            chunk_start: start,
            n_samples: n,
        })
    }

    /// [`GpuThreshold::process_device`] recorded for a submission shared with the stages after
    /// it (the chain's), with as many slots per channel as the largest count so far needed;
    /// the operator moves on to its new state at once (see [`Staged`]). The events are whole
    /// only if the status word reads 0 and no count exceeds the capacity
    /// ([`GpuThreshold::decode_read`]); otherwise the caller rewinds and runs the chunk with
    /// [`GpuThreshold::process_device`], which grows the slots.
    pub(crate) fn stage_device(
        &mut self,
        p: &Params,
        thr: &[f64],
        chunk: &DeviceArray,
        start: u64,
    ) -> Result<(DeviceEvents, Staged)> {
        check_context(&self.ctx, chunk)?;
        let shape = chunk.shape();
        let (n, nc) = (shape[0], shape[1]);
        if self.init_for != Some(nc) {
            self.init(nc, thr)?;
        }
        let cap = self.cap_hint.min(max_events(n)).max(1);
        let (next, enc) = self.record_once(p, chunk.buffer(), n, nc, cap)?;
        let events = self.device_events(cap, nc, start, n)?;
        self.committed = next;
        let staged = Staged {
            commands: enc.finish(),
            checks: vec![(*self.status).clone()],
        };
        Ok((events, staged))
    }

    /// The read-back ranges of `ev`: its counts, then its slots.
    pub(crate) fn event_reads(ev: &DeviceEvents) -> [(&wgpu::Buffer, u64, u64); 2] {
        let nc = ev.n_channels as u64;
        [
            (&**ev.counts, 0, nc * 4),
            (&**ev.slots, 0, nc * ev.capacity as u64 * SLOT_BYTES),
        ]
    }

    /// The events of `ev` from the bytes of its [`GpuThreshold::event_reads`], or `None` when
    /// a channel found more events than it has slots.
    pub(crate) fn decode_read(ev: &DeviceEvents, bytes: &[u8]) -> Option<Vec<Event>> {
        decode_checked(ev, bytes).ok()
    }

    /// Whether `ctx` is this operator's device.
    pub(crate) fn same_device(&self, ctx: &Arc<GpuContext>) -> bool {
        Arc::ptr_eq(&self.ctx, ctx)
    }

    /// Reads device events back: counts and slots in one round trip.
    pub(crate) fn events_to_host(&self, ev: &DeviceEvents) -> Result<Vec<Event>> {
        self.events_and_bytes_to_host(ev, None)
            .map(|(events, _)| events)
    }

    /// [`GpuThreshold::events_to_host`], reading the first `len` bytes of `also` (a buffer of
    /// this device) in the same read-back; returns them after the events.
    pub(crate) fn events_and_bytes_to_host(
        &self,
        ev: &DeviceEvents,
        also: Option<(&wgpu::Buffer, u64)>,
    ) -> Result<(Vec<Event>, Vec<u8>)> {
        let mut read = Self::event_reads(ev).to_vec();
        let slots_end = read.iter().map(|r| r.2 as usize).sum::<usize>();
        if let Some((buf, len)) = also.filter(|&(_, len)| len > 0) {
            read.push((buf, 0, len));
        }
        let mut bytes = self.ctx.scoped(|| {
            let enc = self.ctx.encoder();
            self.ctx.submit_and_read(enc, &read)
        })?;
        let extra = bytes.split_off(slots_end.min(bytes.len()));
        let events = decode_checked(ev, &bytes).map_err(|(c, k)| {
            Error::DeviceArray(format!(
                "channel {c} holds {k} events but has {} slots",
                ev.capacity
            ))
        })?;
        Ok((events, extra))
    }
}

/// The events of `ev` from the bytes of [`GpuThreshold::event_reads`] (counts, then slots),
/// or the first channel, with its count, that found more events than it has slots.
fn decode_checked(
    ev: &DeviceEvents,
    bytes: &[u8],
) -> std::result::Result<Vec<Event>, (usize, u32)> {
    let nc = ev.n_channels;
    let counts: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[..(nc * 4).min(bytes.len())]);
    if let Some(c) = counts.iter().position(|&k| k > ev.capacity) {
        return Err((c, counts[c]));
    }
    let slots = bytes.get(nc * 4..).unwrap_or(&[]);
    Ok(decode(&counts, ev.capacity, slots, ev.chunk_start))
}

/// Host events from per-channel slots, sorted by `(sample, channel)`.
fn decode(counts: &[u32], cap: u32, slots: &[u8], start: u64) -> Vec<Event> {
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(slots);
    let mut events = Vec::with_capacity(counts.iter().map(|&k| k as usize).sum());
    for (c, &k) in counts.iter().enumerate() {
        for j in 0..k.min(cap) as usize {
            let at = 2 * (c * cap as usize + j);
            let (Some(&rel), Some(&val)) = (words.get(at), words.get(at + 1)) else {
                continue;
            };
            let rel = rel as i32 as i64;
            events.push(Event {
                sample: start.wrapping_add_signed(rel),
                channel: c as u32,
                value: f32::from_bits(val),
            });
        }
    }
    events.sort_unstable_by_key(|e| (e.sample, e.channel));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host structs have the shader's layout.
    #[test]
    fn host_structs_match_the_shader() {
        let module = naga::front::wgsl::parse_str(THRESHOLD.source).expect("threshold.wgsl parses");
        let span = |name: &str| {
            module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(name))
                .map(|(_, t)| t.inner.size(module.to_ctx()))
                .unwrap_or_else(|| panic!("no struct {name}"))
        };
        assert_eq!(
            span("Params") as usize,
            std::mem::size_of::<DispatchParams>()
        );
        assert_eq!(span("State") as usize, std::mem::size_of::<InitState>());
        assert_eq!(STATE_BYTES as usize, std::mem::size_of::<InitState>());
    }

    #[test]
    fn comparison_values_are_exact() {
        for t in [0.1f64, -0.1, 0.3, -60.0, 1e-40, -1e-40, 1e300, -1e300, 0.0] {
            let (v, dir) = comparison_value(t);
            assert_eq!(dir, if t >= 0.0 { 1.0 } else { -1.0 });
            if t >= 0.0 {
                assert!(v as f64 >= t && (v.next_down() as f64) < t, "{t}: {v}");
            } else {
                assert!(v as f64 <= t && (v.next_up() as f64) > t, "{t}: {v}");
            }
        }
        assert_eq!(max_events(0), 1);
        assert_eq!(max_events(5), 4);
        assert_eq!(align_step(32, 148), 8);
        assert_eq!(align_step(256, 1024), 1);
    }
}
