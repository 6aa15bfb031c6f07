//! The CPU engine of the band-pass filter: transposed direct form II, `f64` state and
//! arithmetic, time-major rows processed in lockstep across channels.
//!
//! Contiguous chunks run channel block by channel block (16 channels in the AVX-512 build,
//! 8 in the AVX2 one, 4 otherwise): each block's section states stay in registers while its
//! rows stream through a group of up to [`GROUP`] sections, so a row costs one load and one
//! store per block instead of the states' loads and stores per section. (384 channels, 600
//! rows, order 3, on the benches' Zen 4 VM: 275 → 172 µs per chunk in L2, the AVX-512
//! build now bound by its multiplies.) A longer cascade runs its
//! groups in turn over tiles of [`TILE_ROWS`] rows, through a small `f64` work tile. Other
//! strides take the row loop: per row, the samples are widened to `f64` into a work row,
//! then each section runs over the whole row. Both loops do the same IEEE operations in the
//! same order on every sample, so they give the same bits. The state is two arrays per
//! section (`z₁`, `z₂`, one entry per channel). Nothing is allocated per chunk.

use ndarray::{ArrayView2, ArrayViewMut2};

/// One section's coefficients `(b₀, b₁, b₂, a₁, a₂)` (normalised so that `a₀ = 1`).
pub(crate) type Coeffs = [f64; 5];

/// Per-channel section state.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuState {
    /// Channels the state is sized for (0: not yet).
    nc: usize,
    /// `z₁` of section `s`, channel `c` at `s·nc + c`.
    z1: Vec<f64>,
    /// `z₂`, same layout.
    z2: Vec<f64>,
    /// Work row (`nc` entries).
    w: Vec<f64>,
    /// Work tile of the blocked loop ([`TILE_ROWS`] rows of one block), for cascades of
    /// more than [`GROUP`] sections; sized on first use.
    tile: Vec<f64>,
}

/// Most sections whose states one pass over a block's rows keeps in registers.
const GROUP: usize = 3;
/// Rows per pass of a group when the cascade has more than [`GROUP`] sections.
const TILE_ROWS: usize = 128;
/// How many rows ahead of the one it filters the blocked loop asks for its block's inputs.
const PREFETCH_ROWS: usize = 8;

impl CpuState {
    /// Zero state for `nc` channels and `ns` sections.
    pub(crate) fn init(&mut self, ns: usize, nc: usize) {
        self.nc = nc;
        self.z1.clear();
        self.z1.resize(ns * nc, 0.0);
        self.z2.clear();
        self.z2.resize(ns * nc, 0.0);
        self.w.clear();
        self.w.resize(nc, 0.0);
    }

    /// The state as `(z₁ hi, z₁ lo, z₂ hi, z₂ lo)` per (section, channel), section-major:
    /// the `lo` halves are `−0.0` (adding it is the identity, signed zeros included).
    pub(crate) fn pairs(&self) -> Vec<f64> {
        self.z1
            .iter()
            .zip(&self.z2)
            .flat_map(|(&a, &b)| [a, -0.0, b, -0.0])
            .collect()
    }

    /// Sets the state of `ns` sections × `nc` channels from [`CpuState::pairs`]'s layout
    /// (`pairs.len() == 4·ns·nc`, checked by the caller): each value is `hi + lo`.
    pub(crate) fn set_pairs(&mut self, ns: usize, nc: usize, pairs: &[f64]) {
        self.init(ns, nc);
        for (i, p) in pairs.chunks_exact(4).enumerate() {
            self.z1[i] = p[0] + p[1];
            self.z2[i] = p[2] + p[3];
        }
    }

    /// Channels the state is sized for (0 when not yet initialised).
    pub(crate) fn channels(&self) -> usize {
        self.nc
    }

    /// Filters `chunk` into `out` (same shape, checked by the caller; samples checked
    /// finite by the caller). Dispatches at run time to a build of the same loops for
    /// AVX-512F (blocks of 16 channels: two vectors) or AVX2 (blocks of 8) when the CPU has
    /// them: the same IEEE operations in the same order (no FMA contraction), so the output
    /// is bit-identical whichever build runs.
    pub(crate) fn run(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { self.run_avx512(sos, chunk, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { self.run_avx2(sos, chunk, out) };
            }
        }
        self.run_any::<4>(sos, chunk, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        self.run_any::<16>(sos, chunk, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        self.run_any::<8>(sos, chunk, out)
    }

    /// Contiguous chunks take the blocked loop (blocks of `W` channels), others the row
    /// loop: the same bits.
    #[inline(always)]
    fn run_any<const W: usize>(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) {
        match (chunk.as_slice(), out.as_slice_mut()) {
            (Some(x), Some(y)) => self.run_blocks::<W>(sos, x, y),
            _ => self.run_rows(sos, chunk, out),
        }
    }

    /// The row loop: rows in order, every section across all channels in lockstep.
    #[inline(always)]
    pub(crate) fn run_rows(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) {
        let nc = self.nc;
        for (row_in, mut row_out) in chunk.outer_iter().zip(out.outer_iter_mut()) {
            let w = &mut self.w[..nc];
            match row_in.as_slice() {
                Some(r) => {
                    for (wi, &x) in w.iter_mut().zip(r) {
                        *wi = x as f64;
                    }
                }
                None => {
                    for (wi, &x) in w.iter_mut().zip(row_in.iter()) {
                        *wi = x as f64;
                    }
                }
            }
            for (s, &[b0, b1, b2, a1, a2]) in sos.iter().enumerate() {
                let z1 = &mut self.z1[s * nc..(s + 1) * nc];
                let z2 = &mut self.z2[s * nc..(s + 1) * nc];
                for ((x, z1), z2) in w.iter_mut().zip(z1.iter_mut()).zip(z2.iter_mut()) {
                    let xi = *x;
                    let y = b0 * xi + *z1;
                    *z1 = b1 * xi - a1 * y + *z2;
                    *z2 = b2 * xi - a2 * y;
                    *x = y;
                }
            }
            match row_out.as_slice_mut() {
                Some(r) => {
                    for (o, &y) in r.iter_mut().zip(w.iter()) {
                        *o = y as f32;
                    }
                }
                None => {
                    for (o, &y) in row_out.iter_mut().zip(w.iter()) {
                        *o = y as f32;
                    }
                }
            }
        }
    }

    /// The blocked loop over row-major `x` and `y` (`rows × nc` each), block of `W`
    /// channels by block (the last may be partial). A chunk of at least [`CREW_MIN`]
    /// samples through at most [`GROUP`] sections shares its blocks with the crew's helpers
    /// ([`crate::crew`]): each item is a run of whole blocks, so items touch disjoint
    /// channels of `y` and of the states.
    #[inline(always)]
    pub(crate) fn run_blocks<const W: usize>(&mut self, sos: &[Coeffs], x: &[f32], y: &mut [f32]) {
        let nc = self.nc;
        let n_blocks = nc.div_ceil(W);
        let n_groups = sos.len().div_ceil(GROUP);
        if n_groups > 1 && self.tile.len() < TILE_ROWS * W {
            self.tile.resize(TILE_ROWS * W, 0.0);
        }
        let cells = Cells {
            y: Shared::new(y),
            z1: Shared::new(&mut self.z1),
            z2: Shared::new(&mut self.z2),
            nc,
        };
        if n_groups == 1 && n_blocks > 1 && x.len() >= CREW_MIN {
            // The items run in a closure, outside this function's SIMD build: call that
            // build's block function by pointer.
            let block = block_fn::<W>();
            let per = n_blocks.div_ceil(CREW_ITEMS);
            crate::crew::crew_for(n_blocks.div_ceil(per), |i| {
                for b in i * per..n_blocks.min((i + 1) * per) {
                    // SAFETY: item `i` runs once and touches only the channels of its own
                    // blocks; one group needs no work tile.
                    unsafe { block(sos, x, &cells, &mut [], b * W) };
                }
            });
            return;
        }
        for b in 0..n_blocks {
            // SAFETY: `cells` borrows `y` and the states exclusively, and one block runs at
            // a time.
            unsafe { run_block::<W>(sos, x, &cells, &mut self.tile, b * W) };
        }
    }
}

/// Samples per chunk from which the band-pass shares its channel blocks with the crew (a
/// 20 ms chunk of 384 channels has 230 400; a 1 ms one, 11 520, runs on one thread).
const CREW_MIN: usize = 65_536;
/// Items a crew call is cut into (runs of whole blocks).
const CREW_ITEMS: usize = 12;

/// A mutable slice whose disjoint parts are written from several threads.
#[derive(Clone, Copy)]
struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: `Shared` hands out parts of a slice it borrows mutably; its users guarantee that
// no two threads use the same elements at once (see `Shared::part`).
unsafe impl<T: Send> Send for Shared<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    fn new(v: &'a mut [T]) -> Self {
        Shared {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Elements `at .. at + n`, clipped to the slice.
    ///
    /// # Safety
    /// No other reference to these elements may be in use while the returned one is.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn part(&self, at: usize, n: usize) -> &mut [T] {
        let at = at.min(self.len);
        let n = n.min(self.len - at);
        // SAFETY: inside the borrowed slice; exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) }
    }
}

/// The output and the section states of a filter call, shared by the blocks.
struct Cells<'a> {
    y: Shared<'a, f32>,
    z1: Shared<'a, f64>,
    z2: Shared<'a, f64>,
    nc: usize,
}

/// A build of [`run_block`].
type BlockFn = unsafe fn(&[Coeffs], &[f32], &Cells<'_>, &mut [f64], usize);

/// [`run_block`] with `W` channels per block, built for AVX-512F (`W` = 16) or AVX2 (`W` =
/// 8) when the CPU has them.
fn block_fn<const W: usize>() -> BlockFn {
    #[cfg(target_arch = "x86_64")]
    {
        if W == 16 && std::arch::is_x86_feature_detected!("avx512f") {
            return run_block_avx512;
        }
        if W == 8 && std::arch::is_x86_feature_detected!("avx2") {
            return run_block_avx2;
        }
    }
    run_block::<W>
}

/// [`run_block`] of 16 channels for AVX-512F.
///
/// # Safety
/// As [`run_block`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_block_avx512(
    sos: &[Coeffs],
    x: &[f32],
    cells: &Cells<'_>,
    tile: &mut [f64],
    c0: usize,
) {
    // SAFETY: the caller's contract.
    unsafe { run_block::<16>(sos, x, cells, tile, c0) }
}

/// [`run_block`] of 8 channels for AVX2.
///
/// # Safety
/// As [`run_block`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_block_avx2(
    sos: &[Coeffs],
    x: &[f32],
    cells: &Cells<'_>,
    tile: &mut [f64],
    c0: usize,
) {
    // SAFETY: the caller's contract.
    unsafe { run_block::<8>(sos, x, cells, tile, c0) }
}

/// One block of channels `c0 ..` (`W` of them, or the rest of the row; the missing lanes
/// compute on zeros and are never stored): one pass over the rows per group of sections,
/// or, for more than one group, one pass per group over each tile of [`TILE_ROWS`] rows
/// (`tile` then holds `TILE_ROWS · W` values).
///
/// # Safety
/// No other thread may use the block's channels of `cells` meanwhile.
#[inline(always)]
unsafe fn run_block<const W: usize>(
    sos: &[Coeffs],
    x: &[f32],
    cells: &Cells<'_>,
    tile: &mut [f64],
    c0: usize,
) {
    let nc = cells.nc;
    if c0 + W <= nc {
        // SAFETY: the caller's contract.
        unsafe { run_block_lanes::<W, true>(sos, x, cells, tile, c0) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { run_block_lanes::<W, false>(sos, x, cells, tile, c0) }
    }
}

/// [`run_block`] for a whole block (`FULL`) or the last, partial one.
///
/// # Safety
/// As [`run_block`].
#[inline(always)]
unsafe fn run_block_lanes<const W: usize, const FULL: bool>(
    sos: &[Coeffs],
    x: &[f32],
    cells: &Cells<'_>,
    tile: &mut [f64],
    c0: usize,
) {
    let nc = cells.nc;
    let lanes = W.min(nc - c0);
    let rows = x.len() / nc;
    let n_groups = sos.len().div_ceil(GROUP);
    let tile_rows = if n_groups > 1 { TILE_ROWS } else { rows.max(1) };
    let mut t0 = 0;
    while t0 < rows {
        let n = tile_rows.min(rows - t0);
        for g in 0..n_groups {
            let secs = g * GROUP..sos.len().min((g + 1) * GROUP);
            // SAFETY (this and the `BlockIo`'s rows): the block's channels are the
            // caller's alone.
            let mut state = unsafe { BlockState::<W>::load(cells, secs.clone(), c0, lanes) };
            let io = BlockIo {
                x,
                y: &cells.y,
                tile: &mut *tile,
                nc,
                c0,
                lanes,
                t0,
            };
            let sec = &sos[secs.clone()];
            match (g == 0, g + 1 == n_groups) {
                (true, true) => state.group::<FULL, true, true>(sec, n, io),
                (true, false) => state.group::<FULL, true, false>(sec, n, io),
                (false, true) => state.group::<FULL, false, true>(sec, n, io),
                (false, false) => state.group::<FULL, false, false>(sec, n, io),
            }
            // SAFETY: as above.
            unsafe { state.store(cells, secs, c0, lanes) };
        }
        t0 += n;
    }
}

/// Where a group's rows come from and go to: the chunk (the first group, `FIRST`) or the
/// work tile, and the output (the last group, `LAST`) or the work tile; rows counted from
/// the tile's first, `t0`.
struct BlockIo<'a> {
    x: &'a [f32],
    /// Written only in the block's own channels.
    y: &'a Shared<'a, f32>,
    tile: &'a mut [f64],
    nc: usize,
    c0: usize,
    lanes: usize,
    t0: usize,
}

impl BlockIo<'_> {
    /// Row `r`'s input to the group.
    #[inline(always)]
    fn get<const W: usize, const FULL: bool, const FIRST: bool>(&self, r: usize) -> [f64; W] {
        if !FIRST {
            return *self.tile[r * W..].first_chunk().unwrap_or(&[0.0; W]);
        }
        let at = (self.t0 + r) * self.nc + self.c0;
        // The block's row PREFETCH_ROWS ahead: the rows are a stride apart, more than the
        // hardware prefetchers run ahead of on their own.
        crate::engine::prefetch_rows(self.x, at + PREFETCH_ROWS * self.nc, 0, 1, W, false);
        let row = &self.x[at..];
        let v: [f32; W] = if FULL {
            *row.first_chunk().unwrap_or(&[0.0; W])
        } else {
            let mut v = [0.0; W];
            v[..self.lanes].copy_from_slice(&row[..self.lanes]);
            v
        };
        v.map(f64::from)
    }

    /// Row `r`'s output of the group.
    #[inline(always)]
    fn put<const W: usize, const FULL: bool, const LAST: bool>(&mut self, r: usize, v: [f64; W]) {
        if !LAST {
            if let Some(t) = self.tile[r * W..].first_chunk_mut::<W>() {
                *t = v;
            }
            return;
        }
        // SAFETY: the block's own channels of the row (the contract of `run_block`).
        let row = unsafe { self.y.part((self.t0 + r) * self.nc + self.c0, W) };
        let v = v.map(|e| e as f32);
        if FULL {
            if let Some(a) = row.first_chunk_mut::<W>() {
                *a = v;
            }
        } else {
            row[..self.lanes].copy_from_slice(&v[..self.lanes]);
        }
    }
}

/// The states of up to [`GROUP`] sections for one block of `W` channels, in registers while
/// a group runs.
struct BlockState<const W: usize> {
    z1: [[f64; W]; GROUP],
    z2: [[f64; W]; GROUP],
}

impl<const W: usize> BlockState<W> {
    /// Sections `secs`' states of channels `c0 .. c0 + lanes` (zeros in the other lanes).
    ///
    /// # Safety
    /// No other thread may use these channels' states meanwhile.
    #[inline(always)]
    unsafe fn load(
        cells: &Cells<'_>,
        secs: std::ops::Range<usize>,
        c0: usize,
        lanes: usize,
    ) -> Self {
        let mut st = BlockState {
            z1: [[0.0; W]; GROUP],
            z2: [[0.0; W]; GROUP],
        };
        for (j, s) in secs.enumerate() {
            let at = s * cells.nc + c0;
            // SAFETY: the caller's contract.
            let (z1, z2) = unsafe { (cells.z1.part(at, lanes), cells.z2.part(at, lanes)) };
            st.z1[j][..z1.len()].copy_from_slice(z1);
            st.z2[j][..z2.len()].copy_from_slice(z2);
        }
        st
    }

    /// Writes the states back (only the block's real lanes).
    ///
    /// # Safety
    /// As [`BlockState::load`].
    #[inline(always)]
    unsafe fn store(
        &self,
        cells: &Cells<'_>,
        secs: std::ops::Range<usize>,
        c0: usize,
        lanes: usize,
    ) {
        for (j, s) in secs.enumerate() {
            let at = s * cells.nc + c0;
            // SAFETY: the caller's contract.
            let (z1, z2) = unsafe { (cells.z1.part(at, lanes), cells.z2.part(at, lanes)) };
            let n = z1.len();
            z1.copy_from_slice(&self.z1[j][..n]);
            z2.copy_from_slice(&self.z2[j][..n]);
        }
    }

    /// `rows` rows of `io` through the sections `sos` (at most [`GROUP`]).
    #[inline(always)]
    fn group<const FULL: bool, const FIRST: bool, const LAST: bool>(
        &mut self,
        sos: &[Coeffs],
        rows: usize,
        mut io: BlockIo<'_>,
    ) {
        match sos.len() {
            1 => self.run::<1, FULL, FIRST, LAST>(sos, rows, &mut io),
            2 => self.run::<2, FULL, FIRST, LAST>(sos, rows, &mut io),
            _ => self.run::<3, FULL, FIRST, LAST>(sos, rows, &mut io),
        }
    }

    /// `rows` rows of `io` through the `G` sections `sos` (`sos.len() == G`), the states in
    /// locals (registers). Each sample sees the row loop's operations in its order.
    #[inline(always)]
    fn run<const G: usize, const FULL: bool, const FIRST: bool, const LAST: bool>(
        &mut self,
        sos: &[Coeffs],
        rows: usize,
        io: &mut BlockIo<'_>,
    ) {
        let mut c = [[0.0; 5]; G];
        c.copy_from_slice(&sos[..G]);
        let mut z1 = [[0.0; W]; G];
        let mut z2 = [[0.0; W]; G];
        z1.copy_from_slice(&self.z1[..G]);
        z2.copy_from_slice(&self.z2[..G]);
        for r in 0..rows {
            let mut w = io.get::<W, FULL, FIRST>(r);
            for s in 0..G {
                let [b0, b1, b2, a1, a2] = c[s];
                for i in 0..W {
                    let xi = w[i];
                    let y = b0 * xi + z1[s][i];
                    z1[s][i] = b1 * xi - a1 * y + z2[s][i];
                    z2[s][i] = b2 * xi - a2 * y;
                    w[i] = y;
                }
            }
            io.put::<W, FULL, LAST>(r, w);
        }
        self.z1[..G].copy_from_slice(&z1);
        self.z2[..G].copy_from_slice(&z2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64;

    /// The sections of a Butterworth band-pass of `order` (as the filter uses them).
    fn sections(order: usize, low: f64) -> Vec<Coeffs> {
        crate::filter::butter_sos(order, low, 6000.0, 30_000.0)
            .expect("design")
            .iter()
            .map(|s| [s[0], s[1], s[2], s[4], s[5]])
            .collect()
    }

    /// Streams `x` in chunks of `lens` rows (cycled) through `st`, by the blocked loop with
    /// blocks of `W` (`None`: the row loop).
    fn stream(
        st: &mut CpuState,
        sos: &[Coeffs],
        x: &Array2<f32>,
        lens: &[usize],
        w: Option<usize>,
    ) -> Array2<f32> {
        let mut y = Array2::<f32>::zeros(x.raw_dim());
        let (mut at, mut i) = (0, 0);
        while at < x.nrows() {
            let n = lens[i % lens.len()].min(x.nrows() - at);
            i += 1;
            let xs = x.slice(ndarray::s![at..at + n, ..]);
            let mut ys = y.slice_mut(ndarray::s![at..at + n, ..]);
            match (w, xs.as_slice(), ys.as_slice_mut()) {
                (Some(16), Some(a), Some(b)) => st.run_blocks::<16>(sos, a, b),
                (Some(8), Some(a), Some(b)) => st.run_blocks::<8>(sos, a, b),
                (Some(4), Some(a), Some(b)) => st.run_blocks::<4>(sos, a, b),
                (None, ..) => st.run_rows(sos, xs, ys),
                (Some(_), Some(_), Some(_)) => st.run(sos, xs, ys),
                _ => unreachable!("slices of a standard-layout array are contiguous"),
            }
            at += n;
        }
        y
    }

    /// The blocked loop gives the row loop's bits (outputs and state) for every block width,
    /// full and partial blocks, one group of sections or several, any chunking.
    #[test]
    fn blocked_loop_is_bit_identical_to_the_row_loop() {
        let mut r = Pcg64::seed_from_u64(3);
        for &nc in &[1usize, 3, 4, 7, 8, 9, 15, 16, 17, 33, 67, 384] {
            for &(order, low) in &[
                (1usize, 300.0),
                (2, 300.0),
                (3, 300.0),
                (4, 300.0),
                (7, 5.0),
                (12, 300.0),
            ] {
                let sos = sections(order, low);
                let rows = if nc > 100 { 700 } else { 1500 };
                let x = Array2::from_shape_fn((rows, nc), |_| 100.0 * (r.random::<f32>() - 0.5));
                let mut want_st = CpuState::default();
                want_st.init(sos.len(), nc);
                let want = stream(&mut want_st, &sos, &x, &[1500], None);
                for w in [Some(16), Some(8), Some(4), Some(0)] {
                    for lens in [&[1500usize][..], &[1, 129, 7, 600], &[300]] {
                        let mut st = CpuState::default();
                        st.init(sos.len(), nc);
                        let got = stream(&mut st, &sos, &x, lens, w);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "nc {nc} order {order} block {w:?} chunks {lens:?}: outputs differ"
                        );
                        let bits = |v: &[f64]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&st.z1),
                            bits(&want_st.z1),
                            "nc {nc} order {order} {w:?}: z1"
                        );
                        assert_eq!(
                            bits(&st.z2),
                            bits(&want_st.z2),
                            "nc {nc} order {order} {w:?}: z2"
                        );
                    }
                }
            }
        }
    }
}
