//! The GPU half of the recurrent GLM: device buffers, the loop-bound plan, and the dispatches
//! of `shaders/glm.wgsl`.
//!
//! Trials are split into *groups* whose state (a ring of `ws × n × nbq` vec4 per trial) fits
//! one storage binding; a call's steps into *segments* whose outputs fit one binding (and
//! 64 MiB); a segment into dispatches of at most `k` steps (the loop bound). Each
//! (group, segment) is one submission: all its dispatches, then the read-back of its outputs
//! and status. A group's state is double-buffered: the call copies the committed ring into the
//! working one, runs there, and the committed index moves only when every trial of every
//! group finished without overflow.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::{overflow, InitRings, Job, Model, GPU_LOOP_BUDGET};
use crate::error::{Error, Result};
use crate::gpu::{grid, grow_slot, Binding, GpuContext, GrowBuffer, TrackedBuffer};
use crate::rng::key_of;
use crate::shaders::GLM;

/// Group 0 of `glm.wgsl`, binding by binding.
const LAYOUT: [Binding; 12] = [
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
];

/// Stride of the per-dispatch uniforms (WebGPU's largest `min_uniform_buffer_offset_alignment`).
const WIN_STRIDE: u64 = 256;
/// Worst-case loop iterations of one Poisson draw in the shader (64 inversion steps and one
/// Philox call of 10 rounds; or 16 PTRS proposals and 8 Philox calls), rounded up.
pub(crate) const SAMPLER_ITERS: u64 = 100;
/// Most output bytes (per output array) of one segment.
const SEGMENT_BYTES: u64 = 64 << 20;

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuParams {
    n: u32,
    ws: u32,
    nbq: u32,
    n_trials: u32,
    ff_trials: u32,
    mode: u32,
    link: u32,
    n_steps: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuWin {
    t0: u32,
    count: u32,
    step_lo: u32,
    step_hi: u32,
    slot0: u32,
    pad: [u32; 3],
}

/// Loop iterations one invocation of `simulate` can run in one step (see the shader header).
pub(crate) fn iterations_per_step(n: u64, ws: u64, nbq: u64, wg: u64) -> u64 {
    let rates = n.div_ceil(wg) * (n * nbq + SAMPLER_ITERS + 1);
    let clear = (n * nbq).div_ceil(wg);
    let scatter = (n * ws * nbq).div_ceil(wg);
    1 + rates + clear + scatter + 4
}

/// Workgroup size and steps per dispatch for `n` neurons: the smallest power-of-two
/// workgroup (64 … `max_wg`) that covers the neurons or else lets a dispatch hold at least
/// 4 steps, and as many steps as fit [`GPU_LOOP_BUDGET`].
pub(crate) fn plan(n: usize, ws: usize, nbq: usize, max_wg: u32) -> Result<(u32, u32)> {
    let (n64, ws64, q64) = (n as u64, ws as u64, nbq as u64);
    let mut wg = 64u32;
    while wg < max_wg
        && (wg < 256 && (wg as usize) < n
            || iterations_per_step(n64, ws64, q64, wg as u64) * 4 > GPU_LOOP_BUDGET)
    {
        wg *= 2;
    }
    let wg = wg.min(max_wg.max(1));
    let per = iterations_per_step(n64, ws64, q64, wg as u64);
    if per > GPU_LOOP_BUDGET {
        return Err(Error::setting(
            "coupling_coef",
            format!(
                "{n} neurons × {ws} window × {} basis functions: one step needs up to {per} loop \
                 iterations per invocation on the GPU, more than the {GPU_LOOP_BUDGET} this kernel \
                 allows (llvmpipe stops an invocation at 65 535); use the CPU engine",
                4 * nbq
            ),
        ));
    }
    let k = (GPU_LOOP_BUDGET / per).clamp(1, u32::MAX as u64) as u32;
    Ok((wg, k))
}

/// The trials of one group and their device state.
#[derive(Debug)]
struct Group {
    trial0: usize,
    trials: usize,
    ring: [TrackedBuffer; 2],
    cur: usize,
    seeds: TrackedBuffer,
    scratch: TrackedBuffer,
    status: TrackedBuffer,
}

/// Device buffers and pipeline of one [`super::RecurrentGlm`].
#[derive(Debug)]
pub(crate) struct GpuGlm {
    ctx: Arc<GpuContext>,
    model: Arc<Model>,
    nbq: usize,
    wg: u32,
    k: u32,
    coef: TrackedBuffer,
    basis: TrackedBuffer,
    params: TrackedBuffer,
    wins: Option<TrackedBuffer>,
    groups: Vec<Group>,
    ffc: GrowBuffer,
    forced: GrowBuffer,
    rates: GrowBuffer,
    spikes: GrowBuffer,
    pipe: wgpu::ComputePipeline,
}

/// A ring (`ws × n × nb`, `f64`) as the shader's padded `f32` layout.
fn pad_ring(m: &Model, nbq: usize, ring: &[f64], out: &mut Vec<f32>) {
    let nbp = 4 * nbq;
    for s in 0..m.ws {
        for j in 0..m.n {
            let src = &ring[(s * m.n + j) * m.nb..(s * m.n + j + 1) * m.nb];
            out.extend(src.iter().map(|&v| v as f32));
            out.extend(std::iter::repeat_n(0.0, nbp - m.nb));
        }
    }
}

impl GpuGlm {
    pub fn new(ctx: &Arc<GpuContext>, model: Arc<Model>) -> Result<Self> {
        let m = &*model;
        let (n, nb, ws) = (m.n, m.nb, m.ws);
        let nbq = nb.div_ceil(4).max(1);
        let max_wg = ctx
            .limits
            .max_compute_invocations_per_workgroup
            .min(ctx.limits.max_compute_workgroup_size_x)
            .min(1024);
        let (wg, k) = plan(n, ws.max(1), nbq, max_wg)?;
        let coef_bytes = (n * nbq * n * 16) as u64;
        if coef_bytes > ctx.max_binding() {
            return Err(Error::setting(
                "coupling_coef",
                format!(
                    "the coupling matrix takes {coef_bytes} bytes on the GPU, more than one storage \
                     binding holds ({}); use the CPU engine",
                    ctx.max_binding()
                ),
            ));
        }
        // coef[(j·nbq + q)·n + i] = C[i, j, 4q … 4q+3].
        let mut coef = vec![0.0f32; n * nbq * n * 4];
        for i in 0..n {
            for j in 0..n {
                for bb in 0..nb {
                    let (q, r) = (bb / 4, bb % 4);
                    coef[((j * nbq + q) * n + i) * 4 + r] = m.coef[(i * n + j) * nb + bb] as f32;
                }
            }
        }
        let mut basis = vec![0.0f32; ws * nbq * 4];
        for l in 0..ws {
            for bb in 0..nb {
                basis[l * nbq * 4 + bb] = m.basis[l * nb + bb] as f32;
            }
        }
        ctx.scoped(|| {
            let coef_buf = ctx.storage((coef.len() * 4) as u64, "neurokernels.glm.coef")?;
            ctx.queue
                .write_buffer(&coef_buf, 0, bytemuck::cast_slice(&coef));
            let basis_buf = ctx.storage((basis.len() * 4) as u64, "neurokernels.glm.basis")?;
            ctx.queue
                .write_buffer(&basis_buf, 0, bytemuck::cast_slice(&basis));
            Ok(GpuGlm {
                ctx: ctx.clone(),
                model: model.clone(),
                nbq,
                wg,
                k,
                coef: coef_buf,
                basis: basis_buf,
                params: ctx.uniform(
                    std::mem::size_of::<GpuParams>() as u64,
                    "neurokernels.glm.params",
                )?,
                wins: None,
                groups: Vec::new(),
                ffc: GrowBuffer::new("neurokernels.glm.ffc"),
                forced: GrowBuffer::new("neurokernels.glm.forced"),
                rates: GrowBuffer::new("neurokernels.glm.rates"),
                spikes: GrowBuffer::new("neurokernels.glm.spikes"),
                pipe: ctx.pipeline(
                    &GLM,
                    "simulate",
                    &[
                        ("WG", wg as f64),
                        ("N", n as f64),
                        ("WS", ws as f64),
                        ("NBQ", nbq as f64),
                    ],
                    &LAYOUT,
                )?,
            })
        })
    }

    /// (steps per dispatch, workgroup size).
    pub fn steps_per_dispatch(&self) -> (usize, usize) {
        (self.k as usize, self.wg as usize)
    }

    /// Allocates the trial groups and uploads their initial rings and keys. The old groups
    /// are kept until everything succeeded.
    pub fn start(&mut self, rings: &InitRings, seeds: &[u64]) -> Result<()> {
        let ctx = self.ctx.clone();
        let m = &*self.model;
        let b = seeds.len();
        let ring_bytes = (m.ws * m.n * self.nbq * 16) as u64;
        let max = ctx.max_binding();
        if ring_bytes > max {
            return Err(Error::setting(
                "init_y",
                format!(
                    "one trial's window state takes {ring_bytes} bytes on the GPU, more than one \
                     storage binding holds ({max}); use the CPU engine"
                ),
            ));
        }
        let per_group = ((max / ring_bytes.max(1)) as usize)
            .min((max / (8 * m.n as u64).max(1)) as usize)
            .clamp(1, b);
        let groups = ctx.scoped(|| {
            let mut groups = Vec::new();
            let mut t0 = 0;
            while t0 < b {
                let g = per_group.min(b - t0);
                let ring = [
                    ctx.storage(g as u64 * ring_bytes, "neurokernels.glm.ring-0")?,
                    ctx.storage(g as u64 * ring_bytes, "neurokernels.glm.ring-1")?,
                ];
                let mut init = Vec::with_capacity(g * (ring_bytes / 4) as usize);
                for t in t0..t0 + g {
                    pad_ring(m, self.nbq, rings.get(t), &mut init);
                }
                ctx.queue
                    .write_buffer(&ring[0], 0, bytemuck::cast_slice(&init));
                let keys: Vec<[u32; 2]> = seeds[t0..t0 + g].iter().map(|&s| key_of(s)).collect();
                let seeds_buf = ctx.storage((g * 8) as u64, "neurokernels.glm.seeds")?;
                ctx.queue
                    .write_buffer(&seeds_buf, 0, bytemuck::cast_slice(&keys));
                groups.push(Group {
                    trial0: t0,
                    trials: g,
                    ring,
                    cur: 0,
                    seeds: seeds_buf,
                    scratch: ctx.storage((g * 8 * m.n) as u64, "neurokernels.glm.scratch")?,
                    status: ctx.storage((g * 16) as u64, "neurokernels.glm.status")?,
                });
                t0 += g;
            }
            Ok(groups)
        })?;
        self.groups = groups;
        Ok(())
    }

    /// Every trial's committed ring, read back and unpadded to the layout of
    /// [`GpuGlm::start`]'s rings, `[slot][sender][function]`, widened to `f64`.
    pub fn read_rings(&self) -> Result<Vec<Vec<f64>>> {
        let ctx = &self.ctx;
        let m = &*self.model;
        let nbp = 4 * self.nbq;
        let per_trial = m.ws * m.n * nbp;
        let mut out = Vec::new();
        for grp in &self.groups {
            let buf = &grp.ring[grp.cur];
            let bytes = (grp.trials * per_trial * 4) as u64;
            let raw = ctx.scoped(|| ctx.submit_and_read(ctx.encoder(), &[(buf, 0, bytes)]))?;
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(&raw);
            for t in 0..grp.trials {
                let trial = &v[t * per_trial..(t + 1) * per_trial];
                out.push(
                    trial
                        .chunks_exact(nbp)
                        .flat_map(|c| c[..m.nb].iter().map(|&x| x as f64))
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// The per-dispatch uniform buffer, grown to `bytes`.
    fn wins(&mut self, bytes: u64) -> Result<wgpu::Buffer> {
        let ctx = &self.ctx;
        grow_slot(&mut self.wins, bytes, || {
            ctx.uniform(bytes.next_power_of_two(), "neurokernels.glm.windows")
        })
    }

    /// Runs `job` on every group; returns `(spikes, rates)`, `(T, B, n)`.
    pub fn run(&mut self, job: &Job<'_>) -> Result<(Vec<f32>, Vec<f32>)> {
        let ctx = self.ctx.clone();
        ctx.scoped(|| self.run_scoped(job))
    }

    fn run_scoped(&mut self, job: &Job<'_>) -> Result<(Vec<f32>, Vec<f32>)> {
        let ctx = self.ctx.clone();
        let model = self.model.clone();
        let (n, ws) = (model.n, model.ws);
        let b = job.seeds.len();
        let t_len = job.t_len;
        let mut spikes = vec![0.0f32; t_len * b * n];
        let mut rates = vec![0.0f32; t_len * b * n];
        let mut bad: Option<(u64, usize, usize)> = None;
        let k = self.k as usize;
        let max = ctx.max_binding().min(SEGMENT_BYTES);
        for gi in 0..self.groups.len() {
            let (trial0, g) = (self.groups[gi].trial0, self.groups[gi].trials);
            let row_bytes = (g * n * 4) as u64;
            let seg_rows = ((max / row_bytes.max(1)) as usize).clamp(1, t_len);
            let cur = self.groups[gi].cur;
            ctx.queue
                .write_buffer(&self.groups[gi].status, 0, &vec![0u8; g * 16]);
            let mut seg0 = 0;
            while seg0 < t_len {
                let rows = seg_rows.min(t_len - seg0);
                // Inputs of this segment and group.
                let ff_trials = if job.ff_trials == 1 { 1 } else { g };
                let mut ffc = Vec::with_capacity(rows * ff_trials * n);
                for t in seg0..seg0 + rows {
                    let at = if job.ff_trials == 1 {
                        t * n
                    } else {
                        (t * b + trial0) * n
                    };
                    ffc.extend(job.ffc[at..at + ff_trials * n].iter().map(|&v| v as f32));
                }
                let ffc_buf = self.ffc.ensure(&ctx, (ffc.len() * 4) as u64)?;
                ctx.queue
                    .write_buffer(&ffc_buf, 0, bytemuck::cast_slice(&ffc));
                let forced_buf = match job.forced {
                    Some(f) => {
                        let mut v = Vec::with_capacity(rows * g * n);
                        for t in seg0..seg0 + rows {
                            let at = (t * b + trial0) * n;
                            v.extend(f[at..at + g * n].iter().map(|&x| x as f32));
                        }
                        let buf = self.forced.ensure(&ctx, (v.len() * 4) as u64)?;
                        ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&v));
                        buf
                    }
                    None => self.forced.ensure(&ctx, 16)?,
                };
                let out_bytes = (rows * g * n * 4) as u64;
                let rates_buf = self.rates.ensure(&ctx, out_bytes)?;
                let spikes_buf = self.spikes.ensure(&ctx, out_bytes)?;
                let p = GpuParams {
                    n: n as u32,
                    ws: ws as u32,
                    nbq: self.nbq as u32,
                    n_trials: g as u32,
                    ff_trials: ff_trials as u32,
                    mode: job.mode.code(),
                    link: model.link.code(),
                    n_steps: rows as u32,
                };
                ctx.queue
                    .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
                let n_disp = rows.div_ceil(k);
                let win_buf = self.wins(n_disp as u64 * WIN_STRIDE)?;
                let mut win_data = vec![0u8; n_disp * WIN_STRIDE as usize];
                for d in 0..n_disp {
                    let step = job.step0 + (seg0 + d * k) as u64;
                    let w = GpuWin {
                        t0: (d * k) as u32,
                        count: k.min(rows - d * k) as u32,
                        step_lo: step as u32,
                        step_hi: (step >> 32) as u32,
                        slot0: (step % ws as u64) as u32,
                        pad: [0; 3],
                    };
                    let at = d * WIN_STRIDE as usize;
                    win_data[at..at + 32].copy_from_slice(bytemuck::bytes_of(&w));
                }
                ctx.queue.write_buffer(&win_buf, 0, &win_data);

                let grp = &self.groups[gi];
                let work = &grp.ring[1 - cur];
                let mut enc = ctx.encoder();
                if seg0 == 0 {
                    enc.copy_buffer_to_buffer(&grp.ring[cur], 0, work, 0, grp.ring[cur].size());
                }
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("neurokernels.glm.simulate"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&self.pipe);
                    let (x, y, z) = grid(g as u32);
                    for d in 0..n_disp {
                        let bg = ctx.bind(
                            &self.pipe,
                            &[
                                self.params.as_entire_binding(),
                                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: &win_buf,
                                    offset: d as u64 * WIN_STRIDE,
                                    size: wgpu::BufferSize::new(32),
                                }),
                                self.coef.as_entire_binding(),
                                self.basis.as_entire_binding(),
                                ffc_buf.as_entire_binding(),
                                forced_buf.as_entire_binding(),
                                grp.seeds.as_entire_binding(),
                                work.as_entire_binding(),
                                rates_buf.as_entire_binding(),
                                spikes_buf.as_entire_binding(),
                                grp.scratch.as_entire_binding(),
                                grp.status.as_entire_binding(),
                            ],
                        );
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(x, y, z);
                    }
                }
                let bytes = ctx.submit_and_read(
                    enc,
                    &[
                        (&rates_buf, 0, out_bytes),
                        (&spikes_buf, 0, out_bytes),
                        (&grp.status, 0, (g * 16) as u64),
                    ],
                )?;
                let ob = out_bytes as usize;
                let r: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[..ob]);
                let s: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[ob..2 * ob]);
                let st: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[2 * ob..]);
                for t in 0..rows {
                    let dst = ((seg0 + t) * b + trial0) * n;
                    rates[dst..dst + g * n].copy_from_slice(&r[t * g * n..(t + 1) * g * n]);
                    spikes[dst..dst + g * n].copy_from_slice(&s[t * g * n..(t + 1) * g * n]);
                }
                seg0 += rows;
                if seg0 >= t_len {
                    for tr in 0..g {
                        if st[tr * 4] != 0 {
                            let step = st[tr * 4 + 1] as u64 | (st[tr * 4 + 2] as u64) << 32;
                            let cand = (step, trial0 + tr, st[tr * 4 + 3] as usize);
                            if bad.is_none_or(|b0| (cand.0, cand.1) < (b0.0, b0.1)) {
                                bad = Some(cand);
                            }
                        }
                    }
                }
            }
        }
        if let Some((step, trial, neuron)) = bad {
            let t = (step - job.step0) as usize;
            let value = rates[(t * b + trial) * n + neuron] as f64;
            return Err(overflow(step, neuron, value));
        }
        for grp in &mut self.groups {
            grp.cur = 1 - grp.cur;
        }
        Ok((spikes, rates))
    }
}

/// [`super::poisson_samples`] on the GPU: `draw_poisson` over `rates (rows, n)`.
pub(crate) fn poisson_samples(
    ctx: &Arc<GpuContext>,
    rates: ArrayView2<'_, f32>,
    seed: u64,
    first_step: u64,
) -> Result<Array2<f32>> {
    let (rows, n) = rates.dim();
    if rows == 0 || n == 0 {
        return Ok(Array2::zeros((rows, n)));
    }
    let std = rates.as_standard_layout();
    let data = std
        .as_slice()
        .ok_or_else(|| Error::shape("rates", "contiguous", "strided"))?;
    let max_rows = ((ctx.max_binding().min(SEGMENT_BYTES) / (4 * n as u64)) as usize).max(1);
    let pipe = ctx.pipeline(&GLM, "draw_poisson", &[], &LAYOUT)?;
    let mut out = Vec::with_capacity(rows * n);
    ctx.scoped(|| {
        let params = ctx.uniform(32, "neurokernels.glm.params")?;
        let win = ctx.uniform(32, "neurokernels.glm.windows")?;
        let dummy = ctx.storage(16, "neurokernels.glm.unused")?;
        let rw: Vec<TrackedBuffer> = (0..4)
            .map(|_| ctx.storage(16, "neurokernels.glm.unused-rw"))
            .collect::<Result<_>>()?;
        let key = key_of(seed);
        let seeds = ctx.storage(16, "neurokernels.glm.seeds")?;
        ctx.queue
            .write_buffer(&seeds, 0, bytemuck::cast_slice(&key));
        let cap = (max_rows.min(rows) * n * 4) as u64;
        let input = ctx.storage(cap, "neurokernels.glm.rates-in")?;
        let output = ctx.storage(cap, "neurokernels.glm.draws")?;
        let mut r0 = 0;
        while r0 < rows {
            let r = max_rows.min(rows - r0);
            let p = GpuParams {
                n: n as u32,
                n_steps: r as u32,
                ..GpuParams::zeroed()
            };
            ctx.queue.write_buffer(&params, 0, bytemuck::bytes_of(&p));
            let step = first_step + r0 as u64;
            let w = GpuWin {
                step_lo: step as u32,
                step_hi: (step >> 32) as u32,
                ..GpuWin::zeroed()
            };
            ctx.queue.write_buffer(&win, 0, bytemuck::bytes_of(&w));
            ctx.queue
                .write_buffer(&input, 0, bytemuck::cast_slice(&data[r0 * n..(r0 + r) * n]));
            let bg = ctx.bind(
                &pipe,
                &[
                    params.as_entire_binding(),
                    win.as_entire_binding(),
                    dummy.as_entire_binding(),
                    dummy.as_entire_binding(),
                    input.as_entire_binding(),
                    dummy.as_entire_binding(),
                    seeds.as_entire_binding(),
                    rw[0].as_entire_binding(),
                    rw[1].as_entire_binding(),
                    output.as_entire_binding(),
                    rw[2].as_entire_binding(),
                    rw[3].as_entire_binding(),
                ],
            );
            let mut enc = ctx.encoder();
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bg, &[]);
                let (x, y, z) = grid(((r * n) as u32).div_ceil(64));
                pass.dispatch_workgroups(x, y, z);
            }
            let bytes = ctx.submit_and_read(enc, &[(&output, 0, (r * n * 4) as u64)])?;
            out.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
            r0 += r;
        }
        Ok(())
    })?;
    Array2::from_shape_vec((rows, n), out).map_err(|e| Error::Readback(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_keeps_every_dispatch_within_the_budget() {
        for &(n, ws, nb) in &[
            (1, 1, 1),
            (4, 20, 5),
            (50, 100, 10),
            (64, 100, 10),
            (65, 100, 10),
            (200, 100, 10),
            (1000, 100, 10),
            (2000, 100, 10),
            (50, 2000, 3),
        ] {
            let nbq = (nb as usize).div_ceil(4);
            let (wg, k) = plan(n, ws, nbq, 1024).expect("plan");
            let per = iterations_per_step(n as u64, ws as u64, nbq as u64, wg as u64);
            assert!(k >= 1 && per * k as u64 <= GPU_LOOP_BUDGET, "{n} {ws} {nb}");
            assert!(wg.is_power_of_two() && (64..=1024).contains(&wg));
        }
        // 50 neurons, window 100, 10 functions: dozens of steps per dispatch.
        let (wg, k) = plan(50, 100, 3, 1024).expect("plan");
        assert_eq!(wg, 64);
        assert!(k >= 32, "{k}");
        // Too large for one workgroup's step: an error, not a silent cut.
        assert!(plan(20_000, 100, 3, 1024).is_err());
    }
}
