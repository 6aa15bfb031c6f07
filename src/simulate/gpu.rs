//! GPU half of the synthesiser: buffers and dispatch around `shaders/synth.wgsl` (entry
//! `synth`).
//!
//! Once: the per-channel amplitudes and LFP gains and the waveform. Per chunk: the onsets
//! overlapping it grouped by channel (CSR), the LFP phase at each 64-sample block it overlaps
//! (computed in `f64` and reduced mod 1), the dispatches' params, and the output buffer, which
//! becomes the returned [`DeviceArray`]. A chunk larger than one storage binding is split
//! into row pieces, one dispatch each, all in one submit.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::synth::LFP;
use crate::error::{Error, Result};
use crate::gpu::{grid, Binding, DType, DeviceArray, GpuContext, TrackedBuffer};
use crate::shaders::SYNTH;

/// Invocations per workgroup.
const WG_SIZE: u64 = 64;

/// Group 0 of `synth`.
const LAYOUT: [Binding; 8] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

/// The shader's `Params` (one per piece).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    n_channels: u32,
    rows: u32,
    t_lo: u32,
    t_hi: u32,
    row0: u32,
    shift: u32,
    cluster: u32,
    n_wave: u32,
    key0: u32,
    key1: u32,
    noise_uv: f32,
    shared_uv: f32,
    dphase: [f32; 4],
}

/// What the kernel needs besides the onsets.
pub(crate) struct SynthConsts {
    pub(crate) channels: usize,
    pub(crate) cluster: usize,
    pub(crate) key: [u32; 2],
    pub(crate) noise_uv: f32,
    pub(crate) shared_uv: f32,
    pub(crate) fs: f64,
}

/// The device-resident tables of one synthesiser.
pub(crate) struct GpuSynth {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    consts: SynthConsts,
    n_wave: usize,
    amplitude: TrackedBuffer,
    gains: TrackedBuffer,
    wave: TrackedBuffer,
}

impl std::fmt::Debug for GpuSynth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSynth")
            .field("channels", &self.consts.channels)
            .field("n_wave", &self.n_wave)
            .finish()
    }
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

/// A storage buffer holding `data` (at least 16 bytes).
fn filled(ctx: &GpuContext, data: &[u8], label: &str) -> Result<TrackedBuffer> {
    ctx.filled(
        data,
        label,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
}

impl GpuSynth {
    /// Uploads the per-channel tables (`gains`: four per channel) and the waveform.
    pub(crate) fn new(
        ctx: &Arc<GpuContext>,
        consts: SynthConsts,
        amplitude: &[f32],
        gains: &[f32],
        wave: &[f32],
    ) -> Result<Self> {
        let pipeline = ctx.pipeline(&SYNTH, "synth", &[], &LAYOUT)?;
        let n_wave = wave.len();
        let (amplitude, gains, wave) = ctx.scoped(|| {
            Ok((
                filled(
                    ctx,
                    bytemuck::cast_slice(amplitude),
                    "neurokernels.synth.amplitude",
                )?,
                filled(ctx, bytemuck::cast_slice(gains), "neurokernels.synth.gains")?,
                filled(ctx, bytemuck::cast_slice(wave), "neurokernels.synth.wave")?,
            ))
        })?;
        Ok(GpuSynth {
            ctx: ctx.clone(),
            pipeline,
            consts,
            n_wave,
            amplitude,
            gains,
            wave,
        })
    }

    /// Synthesises rows `[start, start + n)` into a new `(n, channels)` device array;
    /// `onsets` are the `(sample, channel)` onsets overlapping them, sorted by sample.
    pub(crate) fn fill(&self, start: u64, n: usize, onsets: &[(u64, u32)]) -> Result<DeviceArray> {
        self.fill_pieces(start, n, onsets, None)
    }

    /// [`GpuSynth::fill`] with at most `rows_cap` rows per piece (rounded to the offset
    /// alignment), so that tests reach the split path with small chunks.
    fn fill_pieces(
        &self,
        start: u64,
        n: usize,
        onsets: &[(u64, u32)],
        rows_cap: Option<u64>,
    ) -> Result<DeviceArray> {
        let ctx = &self.ctx;
        let nc = self.consts.channels;
        if n == 0 {
            let buf = ctx.scoped(|| ctx.storage(16, "neurokernels.synth.output"))?;
            return Ok(DeviceArray::from_buffer(
                ctx,
                Arc::new(buf),
                vec![0, nc],
                DType::F32,
            ));
        }
        let last = start
            .checked_add(n as u64 - 1)
            .ok_or_else(|| Error::PositionOverflow(format!("{start} + {n} samples")))?;
        if n > i32::MAX as usize / 2 {
            return Err(Error::shape(
                "synthesis chunk",
                format!("at most {} samples", i32::MAX / 2),
                n,
            ));
        }
        // The onsets, grouped by channel (stable: each channel's stay in sample order).
        let mut offsets = vec![0u32; nc + 1];
        for &(_, c) in onsets {
            offsets[c as usize + 1] += 1;
        }
        for c in 0..nc {
            offsets[c + 1] += offsets[c];
        }
        let mut fill_at: Vec<u32> = offsets[..nc].to_vec();
        let mut rel = vec![0i32; onsets.len()];
        for &(s, c) in onsets {
            let slot = &mut fill_at[c as usize];
            rel[*slot as usize] = (s as i64 - start as i64) as i32;
            *slot += 1;
        }
        // LFP phase (cycles, mod 1) at the start of every absolute 64-sample block.
        let (b0, b1) = (start >> 6, last >> 6);
        let mut phases = Vec::with_capacity(((b1 - b0 + 1) * 4) as usize);
        for b in b0..=b1 {
            let t = (b << 6) as f64;
            for &(f, _) in LFP.iter() {
                let p = f * t / self.consts.fs;
                phases.push((p - p.floor()) as f32);
            }
        }
        let dphase = LFP.map(|(f, _)| (f / self.consts.fs) as f32);

        // Row pieces: each output binding within the binding limit, at an aligned offset.
        let limits = ctx.limits();
        let a_s = limits.min_storage_buffer_offset_alignment as u64;
        let a_u = (limits.min_uniform_buffer_offset_alignment as u64).max(64);
        let row_bytes = nc as u64 * 4;
        let row_step = a_s / gcd(a_s, row_bytes).max(1);
        let by_binding = ctx.max_binding() / row_bytes / row_step * row_step;
        let rows_per = match rows_cap {
            Some(cap) => by_binding.min((cap / row_step * row_step).max(row_step)),
            None => by_binding,
        };
        if rows_per == 0 {
            return Err(Error::shape(
                "synthesis chunk",
                format!(
                    "rows of at most {} channels on this adapter",
                    ctx.max_binding() / 4
                ),
                format!("{nc} channels"),
            ));
        }
        let n64 = n as u64;
        let pieces: Vec<(u64, u64)> = (0..n64.div_ceil(rows_per))
            .map(|k| (k * rows_per, rows_per.min(n64 - k * rows_per)))
            .collect();
        let c = &self.consts;
        let out = ctx.scoped(|| {
            let output = ctx.storage(n64 * row_bytes, "neurokernels.synth.output")?;
            let offsets_buf = filled(
                ctx,
                bytemuck::cast_slice(&offsets),
                "neurokernels.synth.offsets",
            )?;
            let onsets_buf = filled(ctx, bytemuck::cast_slice(&rel), "neurokernels.synth.onsets")?;
            let phases_buf = filled(
                ctx,
                bytemuck::cast_slice(&phases),
                "neurokernels.synth.phases",
            )?;
            let pbytes = pieces.len() as u64 * a_u;
            let params = ctx.uniform(pbytes.max(256), "neurokernels.synth.params")?;
            let mut pdata = vec![0u8; pbytes as usize];
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let t = start + row0;
                let d = Params {
                    n_channels: nc as u32,
                    rows: rows as u32,
                    t_lo: t as u32,
                    t_hi: (t >> 32) as u32,
                    row0: row0 as u32,
                    shift: (start & 63) as u32,
                    cluster: c.cluster.max(1) as u32,
                    n_wave: self.n_wave as u32,
                    key0: c.key[0],
                    key1: c.key[1],
                    noise_uv: c.noise_uv,
                    shared_uv: c.shared_uv,
                    dphase,
                };
                let at = k * a_u as usize;
                pdata[at..at + std::mem::size_of::<Params>()]
                    .copy_from_slice(bytemuck::bytes_of(&d));
            }
            ctx.queue.write_buffer(&params, 0, &pdata);
            let mut enc = ctx.encoder();
            for (k, &(row0, rows)) in pieces.iter().enumerate() {
                let group = ctx.bind(
                    &self.pipeline,
                    &[
                        bind(
                            &params,
                            k as u64 * a_u,
                            std::mem::size_of::<Params>() as u64,
                        ),
                        self.amplitude.as_entire_binding(),
                        self.gains.as_entire_binding(),
                        self.wave.as_entire_binding(),
                        offsets_buf.as_entire_binding(),
                        onsets_buf.as_entire_binding(),
                        phases_buf.as_entire_binding(),
                        bind(&output, row0 * row_bytes, rows * row_bytes),
                    ],
                );
                let groups = (rows * nc as u64).div_ceil(WG_SIZE);
                let groups = u32::try_from(groups).map_err(|_| {
                    Error::shape("synthesis chunk", "fewer than 2³² workgroups", groups)
                })?;
                let (x, y, z) = grid(groups);
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(x, y, z);
            }
            ctx.queue.submit(Some(enc.finish()));
            Ok(output)
        })?;
        Ok(DeviceArray::from_buffer(
            ctx,
            Arc::new(out),
            vec![n, nc],
            DType::F32,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuOptions;

    /// A chunk split into many pieces (one dispatch each) equals the same chunk in one piece.
    #[test]
    fn pieces_give_the_same_chunk() {
        let ctx = match GpuContext::new(&GpuOptions::software_ok()) {
            Ok(c) => Arc::new(c),
            Err(e) => panic!("no GPU adapter: {e}"),
        };
        let nc = 64;
        let consts = SynthConsts {
            channels: nc,
            cluster: 24,
            key: [7, 0],
            noise_uv: 6.0,
            shared_uv: 25.0,
            fs: 30_000.0,
        };
        let amplitude = vec![90.0f32; nc];
        let gains = vec![10.0f32; nc * 4];
        let wave: Vec<f32> = (0..30).map(|k| -(k as f32) / 30.0).collect();
        let g = GpuSynth::new(&ctx, consts, &amplitude, &gains, &wave).expect("synth");
        let start = (1u64 << 32) - 50;
        let onsets: Vec<(u64, u32)> = (0..20)
            .map(|i| (start - 20 + i * 9, (i * 5) as u32 % 64))
            .collect();
        let read = |a: DeviceArray| a.to_host::<f32>().expect("read back");
        let whole = read(g.fill_pieces(start, 203, &onsets, None).expect("whole"));
        let split = read(g.fill_pieces(start, 203, &onsets, Some(7)).expect("split"));
        assert_eq!(whole, split);
    }
}
