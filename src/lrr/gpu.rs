//! The GPU engine of LRR: the static tables of a channel layout, `C` on the device in
//! double-`f32` tiles (three buffers: the current one is never written while a chunk is
//! being accumulated, so a failed chunk leaves it intact), `I − W` per cluster
//! (double-buffered), and the dispatches of `shaders/lrr.wgsl`.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::solve::{solve_cluster, SINGULAR_TOL};
use super::Layout;
use crate::error::{Error, Result};
use crate::gpu::{
    grid, reusable_output, write_padded, Binding, DType, DeviceArray, GpuContext, GrowBuffer,
    TrackedBuffer,
};
use crate::shaders::{LRR, LRR_QUAD};

/// Group 0 of `lrr.wgsl`, binding by binding.
const LAYOUT: [Binding; 13] = [
    Binding::Uniform,   // 0 params
    Binding::Read,      // 1 x
    Binding::Read,      // 2 tiles
    Binding::Read,      // 3 idx
    Binding::ReadWrite, // 4 partials
    Binding::Read,      // 5 c_src
    Binding::ReadWrite, // 6 c_dst
    Binding::Read,      // 7 clusters
    Binding::ReadWrite, // 8 scratch
    Binding::ReadWrite, // 9 m
    Binding::ReadWrite, // 10 flags
    Binding::ReadWrite, // 11 y
    Binding::Read,      // 12 jobs
];

/// Padding member index (no channel).
const SENT: u32 = u32::MAX;
/// Invocations the accumulation aims for per chunk (tiles × splits).
const TARGET_LANES: usize = 1024;
/// Fewest samples per accumulation invocation (when the chunk has that many).
const MIN_SPLIT: usize = 256;
/// Entries of padding after the last cluster's block of `I − W`: the quad transform reads up
/// to 12 entries past it (into outputs it never stores).
const M_PAD: usize = 16;

/// Whether `members`, cut into runs of 4, is made of aligned consecutive quads: each run
/// starts at a multiple of 4 and counts up by one (the last run may be shorter).
fn aligned_quads(members: &[usize]) -> bool {
    members
        .chunks(4)
        .all(|q| q[0].is_multiple_of(4) && q.iter().enumerate().all(|(i, &c)| c == q[0] + i))
}

/// Whether the quad module (`lrr_quad.wgsl`) serves `layout`: the channel count a multiple
/// of 4, every group of aligned quads, every cluster of whole aligned quads.
fn quad_layout(layout: &Layout) -> bool {
    layout.n.is_multiple_of(4)
        && layout.groups.iter().all(|g| aligned_quads(g))
        && layout
            .clusters
            .iter()
            .all(|c| c.len().is_multiple_of(4) && aligned_quads(c))
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct GpuParams {
    n_ch: u32,
    n_rows: u32,
    n_tiles: u32,
    n_splits: u32,
    split_len: u32,
    incremental: u32,
    zero: u32,
    n_clusters: u32,
    lam_hi: f32,
    lam_lo: f32,
    tol: f32,
    n_jobs: u32,
    direct: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct GpuCluster {
    k: u32,
    mem_off: u32,
    pos_off: u32,
    g_tile: u32,
    g_nb: u32,
    m_off: u32,
    s_off: u32,
    pad: u32,
}

/// Where each group's tiles start, and its block count.
#[derive(Debug, Clone, Copy)]
struct GroupTiles {
    first: usize,
    nb: usize,
}

/// Device buffers and pipelines of one LRR operator.
#[derive(Debug)]
pub(crate) struct GpuLrr {
    ctx: Arc<GpuContext>,
    params: TrackedBuffer,
    tiles: TrackedBuffer,
    idx: TrackedBuffer,
    clusters: TrackedBuffer,
    jobs: TrackedBuffer,
    cluster_rows: Vec<GpuCluster>,
    group_tiles: Vec<GroupTiles>,
    n_tiles: usize,
    n_jobs: usize,
    /// Clusters solved on the device (a prefix; the rest are solved on the host).
    n_gpu_clusters: usize,
    /// Whether the accumulation and the transform run from `lrr_quad.wgsl`.
    quad: bool,
    /// `C` in three copies; `cur` holds the statistics.
    c: [TrackedBuffer; 3],
    cur: usize,
    /// `I − W` in two copies; `m_cur` is in use.
    m: [TrackedBuffer; 2],
    m_cur: usize,
    m_len: usize,
    flags: TrackedBuffer,
    scratch: TrackedBuffer,
    partials: GrowBuffer,
    input: GrowBuffer,
    y: GrowBuffer,
    /// Placeholders for read-only and read-write slots a dispatch does not use (one buffer
    /// may not be bound both ways in a dispatch).
    dummy_r: TrackedBuffer,
    dummy_w: TrackedBuffer,
    dev_out: Option<Arc<TrackedBuffer>>,
    pending: Option<wgpu::SubmissionIndex>,
    pipe_tiles: wgpu::ComputePipeline,
    pipe_fold: wgpu::ComputePipeline,
    pipe_solve: wgpu::ComputePipeline,
    pipe_transform: wgpu::ComputePipeline,
}

impl GpuLrr {
    pub fn new(ctx: &Arc<GpuContext>, layout: &Layout) -> Result<Self> {
        let max_binding = ctx.max_binding() as usize;
        // Member table: groups padded to 16, then cluster members and positions, then the
        // pass-through channels.
        let mut idx: Vec<u32> = Vec::new();
        let mut tiles: Vec<[u32; 4]> = Vec::new();
        let mut group_tiles = Vec::new();
        for g in &layout.groups {
            let nb = g.len().div_ceil(16);
            let off = idx.len() as u32;
            idx.extend(g.iter().map(|&c| c as u32));
            idx.resize(off as usize + nb * 16, SENT);
            group_tiles.push(GroupTiles {
                first: tiles.len(),
                nb,
            });
            for bi in 0..nb {
                for bj in bi..nb {
                    tiles.push([off + 16 * bi as u32, off + 16 * bj as u32, 0, 0]);
                }
            }
        }
        let n_tiles = tiles.len();
        let c_bytes = n_tiles * 256 * 8;
        if c_bytes > max_binding {
            return Err(Error::shape(
                "channel_clusters",
                format!("cluster blocks of C within one device binding ({max_binding} bytes)"),
                format!("{c_bytes} bytes of C tiles"),
            ));
        }
        let mut cluster_rows = Vec::new();
        let (mut m_off, mut s_off) = (0usize, 0usize);
        let mut n_gpu_clusters = 0;
        let mut gpu_ok = true;
        for (ci, c) in layout.clusters.iter().enumerate() {
            let k = c.len();
            let mem_off = idx.len() as u32;
            idx.extend(c.iter().map(|&ch| ch as u32));
            let pos_off = idx.len() as u32;
            idx.extend(layout.cluster_pos[ci].iter().map(|&p| p as u32));
            let gt = group_tiles[layout.cluster_group[ci]];
            let need = (k * k + 2 * k) * 8;
            if gpu_ok && (s_off + k * k + 2 * k) * 8 <= max_binding {
                n_gpu_clusters += 1;
            } else {
                gpu_ok = false;
            }
            cluster_rows.push(GpuCluster {
                k: k as u32,
                mem_off,
                pos_off,
                g_tile: gt.first as u32,
                g_nb: gt.nb as u32,
                m_off: m_off as u32,
                s_off: s_off as u32,
                pad: 0,
            });
            m_off += k * k;
            if gpu_ok {
                s_off += need / 8;
            }
        }
        let m_len = m_off;
        if (m_len + M_PAD) * 4 > max_binding {
            return Err(Error::shape(
                "channel_clusters",
                format!("cluster blocks of W within one device binding ({max_binding} bytes)"),
                format!("{} bytes", (m_len + M_PAD) * 4),
            ));
        }
        let mut jobs: Vec<[u32; 4]> = Vec::new();
        for (ci, c) in layout.clusters.iter().enumerate() {
            for cb in (0..c.len()).step_by(16) {
                jobs.push([0, ci as u32, cb as u32, 0]);
            }
        }
        let pass_off = idx.len() as u32;
        idx.extend(layout.passthrough.iter().map(|&c| c as u32));
        for (j, chunk) in layout.passthrough.chunks(16).enumerate() {
            jobs.push([1, pass_off + 16 * j as u32, 0, chunk.len() as u32]);
        }
        let identity: Vec<f32> = {
            let mut m = vec![0f32; m_len + M_PAD];
            for c in &cluster_rows {
                for a in 0..c.k as usize {
                    m[c.m_off as usize + a * c.k as usize + a] = 1.0;
                }
            }
            m
        };
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let quad = quad_layout(layout);
        let fast = if quad { &LRR_QUAD } else { &LRR };
        ctx.scoped(|| {
            Ok(GpuLrr {
                ctx: ctx.clone(),
                params: ctx.filled(
                    bytemuck::bytes_of(&GpuParams::default()),
                    "lrr-params",
                    wgpu::BufferUsages::UNIFORM,
                )?,
                tiles: ctx.filled(bytemuck::cast_slice(&tiles), "lrr-tiles", storage)?,
                idx: ctx.filled(bytemuck::cast_slice(&idx), "lrr-idx", storage)?,
                clusters: ctx.filled(
                    bytemuck::cast_slice(&cluster_rows),
                    "lrr-clusters",
                    storage,
                )?,
                jobs: ctx.filled(bytemuck::cast_slice(&jobs), "lrr-jobs", storage)?,
                cluster_rows,
                group_tiles,
                n_tiles,
                n_jobs: jobs.len(),
                n_gpu_clusters,
                quad,
                c: [
                    ctx.storage(c_bytes as u64, "lrr-c-a")?,
                    ctx.storage(c_bytes as u64, "lrr-c-b")?,
                    ctx.storage(c_bytes as u64, "lrr-c-c")?,
                ],
                cur: 0,
                m: [
                    ctx.filled(bytemuck::cast_slice(&identity), "lrr-m-a", storage)?,
                    ctx.filled(bytemuck::cast_slice(&identity), "lrr-m-b", storage)?,
                ],
                m_cur: 0,
                m_len,
                flags: ctx.storage((4 * layout.clusters.len()) as u64, "lrr-flags")?,
                scratch: ctx.storage((s_off * 8) as u64, "lrr-scratch")?,
                partials: GrowBuffer::new("lrr-partials"),
                input: GrowBuffer::new("lrr-input"),
                y: GrowBuffer::new("lrr-y"),
                dummy_r: ctx.storage(16, "lrr-dummy-r")?,
                dummy_w: ctx.storage(16, "lrr-dummy-w")?,
                dev_out: None,
                pending: None,
                pipe_tiles: ctx.pipeline(fast, "cov_tiles", &[], &LAYOUT)?,
                pipe_fold: ctx.pipeline(&LRR, "cov_fold", &[], &LAYOUT)?,
                pipe_solve: ctx.pipeline(&LRR, "solve", &[], &LAYOUT)?,
                pipe_transform: ctx.pipeline(fast, "transform", &[], &LAYOUT)?,
            })
        })
    }

    /// Whether this layout runs the quad kernels (vector loads of 4 channels).
    pub fn quad(&self) -> bool {
        self.quad
    }

    /// Drops the per-chunk buffers, sized for the largest chunk so far.
    pub(crate) fn release_scratch(&mut self) {
        self.partials.release();
        self.input.release();
        self.y.release();
        self.dev_out = None;
    }

    /// Waits for the last unwaited submission (bounds the memory queued behind it).
    fn wait_pending(&mut self) -> Result<()> {
        if let Some(i) = self.pending.take() {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(i),
                    timeout: None,
                })
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        Ok(())
    }

    /// Largest number of rows of `nc` channels one binding holds.
    fn max_rows(&self, nc: usize) -> usize {
        ((self.ctx.max_binding() as usize) / (4 * nc.max(1)))
            .clamp(1, u32::MAX as usize / nc.max(1))
    }

    /// The 13 bindings with the given buffers in the slots that vary.
    #[allow(clippy::too_many_arguments)]
    fn resources<'a>(
        &'a self,
        x: &'a wgpu::Buffer,
        partials: &'a wgpu::Buffer,
        c_src: &'a wgpu::Buffer,
        c_dst: &'a wgpu::Buffer,
        m: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
    ) -> [wgpu::BindingResource<'a>; 13] {
        [
            self.params.as_entire_binding(),
            x.as_entire_binding(),
            self.tiles.as_entire_binding(),
            self.idx.as_entire_binding(),
            partials.as_entire_binding(),
            c_src.as_entire_binding(),
            c_dst.as_entire_binding(),
            self.clusters.as_entire_binding(),
            self.scratch.as_entire_binding(),
            m.as_entire_binding(),
            self.flags.as_entire_binding(),
            y.as_entire_binding(),
            self.jobs.as_entire_binding(),
        ]
    }

    fn base_params(&self) -> GpuParams {
        GpuParams {
            n_tiles: self.n_tiles as u32,
            n_jobs: self.n_jobs as u32,
            n_clusters: self.n_gpu_clusters as u32,
            tol: SINGULAR_TOL as f32,
            ..Default::default()
        }
    }

    /// Adds `XᵀX` of a validated host chunk to `C` (or replaces `C`).
    pub fn accumulate(
        &mut self,
        _layout: &Layout,
        chunk: ArrayView2<'_, f32>,
        replace: bool,
    ) -> Result<()> {
        let std = chunk.as_standard_layout();
        let (rows, nc) = std.dim();
        let data = std.as_slice().unwrap_or(&[]);
        let max_rows = self.max_rows(nc);
        self.wait_pending()?;
        let ctx = self.ctx.clone();
        let mut src = self.cur;
        let mut dst = (self.cur + 1) % 3;
        let mut first = true;
        let mut start = 0;
        let result = ctx.scoped(|| {
            loop {
                let n = (rows - start).min(max_rows);
                let sub = &data[start * nc..(start + n) * nc];
                // One invocation per (tile, split): enough of them to fill the device, each
                // with at least MIN_SPLIT samples so its partial tile is worth writing.
                let max_splits = (ctx.max_binding() as usize / (self.n_tiles * 2048)).max(1);
                let n_splits = TARGET_LANES
                    .div_ceil(self.n_tiles)
                    .clamp(1, n.div_ceil(MIN_SPLIT).max(1))
                    .min(max_splits);
                let split_len = n.div_ceil(n_splits).div_ceil(16).max(1) * 16;
                let n_splits = n.div_ceil(split_len).max(1);
                let p = GpuParams {
                    n_ch: nc as u32,
                    n_rows: n as u32,
                    n_splits: n_splits as u32,
                    split_len: split_len as u32,
                    incremental: u32::from(!(replace && first)),
                    direct: u32::from(n_splits == 1),
                    ..self.base_params()
                };
                ctx.queue
                    .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
                let input = self.input.ensure(&ctx, (sub.len() * 4) as u64)?;
                write_padded(&ctx, &input, 0, bytemuck::cast_slice(sub));
                let partials = self
                    .partials
                    .ensure(&ctx, (n_splits * self.n_tiles * 256 * 8) as u64)?;
                let m = &self.m[self.m_cur];
                let res = self.resources(
                    &input,
                    &partials,
                    &self.c[src],
                    &self.c[dst],
                    m,
                    &self.dummy_w,
                );
                let mut enc = ctx.encoder();
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    let bg = ctx.bind(&self.pipe_tiles, &res);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.set_pipeline(&self.pipe_tiles);
                    let (gx, gy, gz) = grid((self.n_tiles * n_splits).div_ceil(64) as u32);
                    pass.dispatch_workgroups(gx, gy, gz);
                    if n_splits > 1 {
                        pass.set_pipeline(&self.pipe_fold);
                        let (gx, gy, gz) = grid((self.n_tiles * 256).div_ceil(64) as u32);
                        pass.dispatch_workgroups(gx, gy, gz);
                    }
                }
                self.pending = Some(ctx.queue.submit(Some(enc.finish())));
                first = false;
                start += n;
                if start >= rows {
                    break;
                }
                // Next sub-chunk: read what was just written, write the other spare buffer
                // (`cur` itself is never written before the whole chunk is in).
                let spare = 3 - self.cur - dst;
                src = dst;
                dst = spare;
                self.wait_pending()?;
            }
            Ok(())
        });
        result?;
        self.cur = dst;
        Ok(())
    }

    /// Solves every cluster: on the device for the first `n_gpu_clusters`, on the host (in
    /// `f64` from the device's `C`) for singular clusters and for clusters whose scratch
    /// exceeds one binding.
    pub fn solve(&mut self, layout: &Layout, lambda: f64) -> Result<Vec<usize>> {
        let ctx = self.ctx.clone();
        let next = 1 - self.m_cur;
        let ng = self.n_gpu_clusters;
        let lam_hi = lambda as f32;
        let flags: Vec<u32> = ctx.scoped(|| {
            if ng == 0 {
                return Ok(Vec::new());
            }
            let p = GpuParams {
                lam_hi,
                lam_lo: (lambda - lam_hi as f64) as f32,
                ..self.base_params()
            };
            ctx.queue
                .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
            let y = self.y.ensure(&ctx, 16)?;
            let res = self.resources(
                &self.dummy_r,
                &self.dummy_w,
                &self.c[self.cur],
                &self.c[(self.cur + 1) % 3],
                &self.m[next],
                &y,
            );
            let mut enc = ctx.encoder();
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                let bg = ctx.bind(&self.pipe_solve, &res);
                pass.set_bind_group(0, &bg, &[]);
                pass.set_pipeline(&self.pipe_solve);
                pass.dispatch_workgroups(ng as u32, 1, 1);
            }
            let bytes = ctx.submit_and_read(enc, &[(&self.flags, 0, (4 * ng) as u64)])?;
            Ok(bytemuck::pod_collect_to_vec(&bytes))
        })?;
        let host: Vec<usize> = (0..layout.clusters.len())
            .filter(|&ci| ci >= ng || flags.get(ci).is_some_and(|&f| f != 0))
            .collect();
        let mut singular = Vec::new();
        if !host.is_empty() {
            let groups = self.group_blocks(layout)?;
            for &ci in &host {
                let k = layout.clusters[ci].len();
                let g = &groups[layout.cluster_group[ci]];
                let kg = layout.groups[layout.cluster_group[ci]].len();
                let pos = &layout.cluster_pos[ci];
                let mut block = vec![0.0; k * k];
                for a in 0..k {
                    for b in 0..k {
                        block[a * k + b] = g[pos[a] * kg + pos[b]];
                    }
                }
                let s = solve_cluster(&block, k, lambda);
                if s.pinv {
                    singular.push(ci);
                }
                self.write_m_block(next, ci, &s.w);
            }
        }
        self.m_cur = next;
        Ok(singular)
    }

    /// Writes cluster `ci`'s `I − W` into copy `which` of `m`.
    fn write_m_block(&self, which: usize, ci: usize, w: &[f64]) {
        let c = self.cluster_rows[ci];
        let k = c.k as usize;
        let mut m = vec![0f32; k * k];
        for a in 0..k {
            for b in 0..k {
                m[a * k + b] = (if a == b { 1.0 } else { 0.0 } - w[a * k + b]) as f32;
            }
        }
        self.ctx
            .queue
            .write_buffer(&self.m[which], 4 * c.m_off as u64, bytemuck::cast_slice(&m));
    }

    /// Installs per-cluster `W` blocks (preloaded weights).
    pub fn set_weights(&mut self, _layout: &Layout, blocks: &[Vec<f64>]) -> Result<()> {
        self.wait_pending()?;
        let next = 1 - self.m_cur;
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            for (ci, w) in blocks.iter().enumerate() {
                self.write_m_block(next, ci, w);
            }
            ctx.submit_and_read(ctx.encoder(), &[])?;
            Ok(())
        })?;
        self.m_cur = next;
        Ok(())
    }

    /// Per-cluster `W` blocks read back from the device (`W = I − M`, exact).
    pub fn weight_blocks(&mut self, layout: &Layout) -> Result<Vec<Vec<f64>>> {
        self.wait_pending()?;
        let ctx = self.ctx.clone();
        let bytes = ctx.scoped(|| {
            ctx.submit_and_read(
                ctx.encoder(),
                &[(&self.m[self.m_cur], 0, (self.m_len * 4) as u64)],
            )
        })?;
        let m: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(layout
            .clusters
            .iter()
            .zip(&self.cluster_rows)
            .map(|(_, c)| {
                let k = c.k as usize;
                (0..k * k)
                    .map(|e| {
                        let id = if e / k == e % k { 1.0 } else { 0.0 };
                        id - m[c.m_off as usize + e] as f64
                    })
                    .collect()
            })
            .collect())
    }

    /// Each group's `C` block (`k × k`, `hi + lo` in `f64`), read back from the device.
    pub fn group_blocks(&mut self, layout: &Layout) -> Result<Vec<Vec<f64>>> {
        Ok(self
            .group_pairs(layout)?
            .into_iter()
            .map(|b| b.into_iter().map(|v| v[0] as f64 + v[1] as f64).collect())
            .collect())
    }

    /// Position in the tile buffer of entry `(i, j)` of a group (symmetric: the upper one).
    fn tile_index(gt: &GroupTiles, i: usize, j: usize) -> usize {
        let (pa, pb) = if i <= j { (i, j) } else { (j, i) };
        let (ba, bb) = (pa / 16, pb / 16);
        let tile = gt.first + ba * (2 * gt.nb - ba + 1) / 2 + (bb - ba);
        tile * 256 + (pa % 16) * 16 + pb % 16
    }

    /// Each group's `C` block (`k × k`) as the device's double-`f32` `(hi, lo)` pairs.
    pub fn group_pairs(&mut self, layout: &Layout) -> Result<Vec<Vec<[f32; 2]>>> {
        self.wait_pending()?;
        let ctx = self.ctx.clone();
        let bytes = ctx.scoped(|| {
            ctx.submit_and_read(
                ctx.encoder(),
                &[(&self.c[self.cur], 0, (self.n_tiles * 256 * 8) as u64)],
            )
        })?;
        let c: Vec<[f32; 2]> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(layout
            .groups
            .iter()
            .zip(&self.group_tiles)
            .map(|(g, gt)| {
                let k = g.len();
                (0..k * k)
                    .map(|e| c[Self::tile_index(gt, e / k, e % k)])
                    .collect()
            })
            .collect())
    }

    /// Makes `blocks` (each group's `k × k` `(hi, lo)` pairs, symmetric) the device's `C`.
    pub fn set_group_pairs(&mut self, layout: &Layout, blocks: &[Vec<[f32; 2]>]) -> Result<()> {
        self.wait_pending()?;
        let mut c = vec![[0f32; 2]; self.n_tiles * 256];
        for ((g, gt), b) in layout.groups.iter().zip(&self.group_tiles).zip(blocks) {
            let k = g.len();
            for i in 0..k {
                for j in 0..k {
                    // Inside a diagonal tile both triangles are written.
                    if i / 16 == j / 16 {
                        let t = Self::tile_index(gt, i, j) / 256;
                        c[t * 256 + (i % 16) * 16 + j % 16] = b[i * k + j];
                    } else if i < j {
                        c[Self::tile_index(gt, i, j)] = b[i * k + j];
                    }
                }
            }
        }
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            ctx.queue
                .write_buffer(&self.c[self.cur], 0, bytemuck::cast_slice(&c));
            ctx.submit_and_read(ctx.encoder(), &[])?;
            Ok(())
        })
    }

    /// Records the transform of `n` rows of `x` into `y`.
    fn record_transform(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        n: usize,
        nc: usize,
    ) -> wgpu::CommandEncoder {
        let ctx = &self.ctx;
        let p = GpuParams {
            n_ch: nc as u32,
            n_rows: n as u32,
            ..self.base_params()
        };
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        let res = self.resources(
            x,
            &self.dummy_w,
            &self.c[self.cur],
            &self.c[(self.cur + 1) % 3],
            &self.m[self.m_cur],
            y,
        );
        let mut enc = ctx.encoder();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            let bg = ctx.bind(&self.pipe_transform, &res);
            pass.set_bind_group(0, &bg, &[]);
            pass.set_pipeline(&self.pipe_transform);
            let (gx, gy, gz) = grid((n.div_ceil(16) * self.n_jobs).div_ceil(64) as u32);
            pass.dispatch_workgroups(gx, gy, gz);
        }
        enc
    }

    /// Transform of a host chunk, read back to the host.
    pub fn transform_host(
        &mut self,
        _layout: &Layout,
        chunk: ArrayView2<'_, f32>,
    ) -> Result<Array2<f32>> {
        let std = chunk.as_standard_layout();
        let (rows, nc) = std.dim();
        let data = std.as_slice().unwrap_or(&[]);
        let max_rows = self
            .max_rows(nc)
            .min((u32::MAX as usize / self.n_jobs.max(1)) * 16);
        // No wait for a pending accumulation: the queue runs it first, and the read-back
        // below waits for both.
        self.pending = None;
        let ctx = self.ctx.clone();
        let mut out: Vec<f32> = Vec::with_capacity(rows * nc);
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(max_rows);
            let sub = &data[start * nc..(start + n) * nc];
            let bytes = ctx.scoped(|| {
                let input = self.input.ensure(&ctx, (sub.len() * 4) as u64)?;
                write_padded(&ctx, &input, 0, bytemuck::cast_slice(sub));
                let y = self.y.ensure(&ctx, (sub.len() * 4) as u64)?;
                let enc = self.record_transform(&input, &y, n, nc);
                ctx.submit_and_read(enc, &[(&y, 0, (sub.len() * 4) as u64)])
            })?;
            out.extend_from_slice(bytemuck::cast_slice(&bytes));
            start += n;
        }
        Array2::from_shape_vec((rows, nc), out).map_err(|e| Error::Readback(e.to_string()))
    }

    /// Submits `commands` (a staged transform), not waiting for them.
    pub fn submit(&mut self, commands: wgpu::CommandBuffer) {
        self.pending = Some(self.ctx.queue.submit(Some(commands)));
    }

    /// The transform of a device chunk into a device array, recorded: the commands (none for
    /// an empty chunk) are the caller's to submit, with [`GpuLrr::submit`] or together with
    /// the stages after it (the chain's one submission per chunk).
    pub fn stage_transform_device(
        &mut self,
        chunk: &DeviceArray,
    ) -> Result<(DeviceArray, Option<wgpu::CommandBuffer>)> {
        if !Arc::ptr_eq(chunk.context(), &self.ctx) {
            return Err(Error::DeviceArray("chunk lives on another device".into()));
        }
        let (n, nc) = (chunk.shape()[0], chunk.shape()[1]);
        if n > self.max_rows(nc) {
            return Err(Error::DeviceArray(format!(
                "a device chunk of {n} rows × {nc} channels exceeds one binding; split it"
            )));
        }
        self.wait_pending()?;
        let bytes = (n * nc * 4) as u64;
        let out = reusable_output(&self.ctx, &mut self.dev_out, bytes, "lrr-out")?;
        let commands = if n > 0 {
            let ctx = self.ctx.clone();
            Some(ctx.scoped(|| Ok(self.record_transform(chunk.buffer(), &out, n, nc).finish()))?)
        } else {
            None
        };
        Ok((
            DeviceArray::from_buffer(&self.ctx, out, vec![n, nc], DType::F32),
            commands,
        ))
    }
}
