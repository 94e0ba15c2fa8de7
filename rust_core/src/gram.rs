//! One streaming pass over the input: the Gram matrix X^T X of the column blocks
//! X = [B_0 | B_1 | ... | B_{T-1}], each block a row-major d x k slice.
//!
//! All pairwise geometry needs only this n x n matrix (n = T k), so the pass is
//! the only work that scales with d:
//! * rows are split across rayon threads, each summing into its own Gram;
//! * per block of rows, register-blocked microkernels accumulate output tiles
//!   of the upper triangle with FMAs, reading the input in place (or a packed
//!   panel when k does not fit the tiles), with the next rows prefetched;
//! * accumulation runs in the input precision for `BLOCK_ROWS` rows only and is
//!   then added into f64, so rounding error does not grow with d.

use crate::simd::{
    detect, prefetch, vectorized_for, Isa, Kernel, Real, Vector, Vectors, MAX_LANES,
};
use rayon::prelude::*;

/// Rows accumulated in input precision before the partial sums go into f64.
/// Small enough that the f32 rounding error of a partial sum stays ~1e-6
/// relative (worst case), large enough that the flush costs a few percent.
const BLOCK_ROWS: usize = 64;
/// Rows per rayon task: big enough to amortise scheduling, small enough to balance.
const CHUNK_ROWS: usize = BLOCK_ROWS * 256;

/// A symmetric n x n matrix in f64, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Gram {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Gram {
    #[inline]
    pub fn get(&self, a: usize, b: usize) -> f64 {
        self.data[a * self.n + b]
    }
}

/// How a task's `d x k` gradient samples lie in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major: sample j of parameter i at `i * k + j` (a C-ordered (d, k) array).
    RowMajor,
    /// Column-major: the k samples one after another, each d long (`j * d + i`);
    /// e.g. a C-ordered (k, d) stack of gradients seen as (d, k). Read in place,
    /// so a monitor can hand over torch's (T, k, d) gradients without a transpose.
    ColMajor,
}

/// [`gram`] for blocks in either [`Layout`].
pub fn gram_in<E: Vectors>(blocks: &[&[E]], d: usize, k: usize, layout: Layout) -> Gram {
    match layout {
        Layout::RowMajor => gram(blocks, d, k),
        Layout::ColMajor => {
            assert!(
                blocks.iter().all(|b| b.len() == d * k),
                "block shape mismatch"
            );
            // every sample is a contiguous vector: the plain dot-product kernel
            let samples: Vec<&[E]> = blocks.iter().flat_map(|b| b.chunks_exact(d)).collect();
            gram_of_vectors(detect(), &samples)
        }
    }
}

/// Gram matrix of the columns of `[B_0 | ... | B_{T-1}]`, each `blocks[t]` a
/// row-major `d x k` slice (so `blocks[t].len() == d * k`).
pub fn gram<E: Vectors>(blocks: &[&[E]], d: usize, k: usize) -> Gram {
    gram_with(detect(), blocks, d, k)
}

/// [`gram`] with the instruction set chosen by the caller (tests compare them).
/// `isa` must be supported by this CPU (as reported by [`detect`] or below it).
pub(crate) fn gram_with<E: Vectors>(isa: Isa, blocks: &[&[E]], d: usize, k: usize) -> Gram {
    assert!(
        blocks.iter().all(|b| b.len() == d * k),
        "block shape mismatch"
    );
    if k == 1 {
        return gram_of_vectors(isa, blocks);
    }
    let n = blocks.len() * k;
    // Output tiles are pairs of vector columns (2 * LANES wide); the padded width
    // is a multiple of that. Register budget per tile: 16 accumulators on AVX-512
    // (of 32 registers), 8 on AVX2 (of 16).
    let lanes = match isa {
        Isa::Avx512 => <E::Avx512 as Vector<E>>::LANES,
        Isa::Avx2Fma => <E::Avx2 as Vector<E>>::LANES,
        Isa::Portable => <E::Portable as Vector<E>>::LANES,
    };
    let stride = n.div_ceil(2 * lanes) * 2 * lanes;
    let padded = (0..d.div_ceil(CHUNK_ROWS))
        .into_par_iter()
        .fold(
            || Partial::new(stride),
            |mut acc, c| {
                let job = Job {
                    blocks,
                    k,
                    n,
                    stride,
                    rows: c * CHUNK_ROWS..d.min((c + 1) * CHUNK_ROWS),
                    acc: &mut acc,
                };
                match isa {
                    Isa::Avx512 => vectorized_for(isa, Accumulate::<_, 8>(job)),
                    Isa::Avx2Fma => vectorized_for(isa, Accumulate::<_, 4>(job)),
                    Isa::Portable => vectorized_for(isa, Accumulate::<_, 4>(job)),
                }
                acc
            },
        )
        .map(|acc| acc.gram)
        .reduce(|| vec![0.0; stride * stride], add_into);
    // Only entries with row <= col are guaranteed computed; mirror them.
    symmetric_from_upper(&padded, n, stride)
}

fn add_into(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    a
}

/// The n x n symmetric matrix whose upper triangle is that of `upper` (row
/// length `stride`).
fn symmetric_from_upper(upper: &[f64], n: usize, stride: usize) -> Gram {
    let mut data = vec![0.0; n * n];
    for a in 0..n {
        for b in a..n {
            let v = upper[a * stride + b];
            data[a * n + b] = v;
            data[b * n + a] = v;
        }
    }
    Gram { n, data }
}

/// Gram of T plain vectors (k = 1, e.g. PCGrad): packing T scalars per row
/// would cost more than the arithmetic, so the dot products are summed directly
/// over chunks that stay in L1, 4 x 4 pairs at a time.
fn gram_of_vectors<E: Vectors>(isa: Isa, vectors: &[&[E]]) -> Gram {
    let n = vectors.len();
    let d = vectors[0].len();
    // Per pair, MAX_LANES partial sums in f64 (added up at the end).
    let lanes = (0..d.div_ceil(DOT_CHUNK))
        .into_par_iter()
        .fold(
            || vec![0.0f64; n * n * MAX_LANES],
            |mut acc, c| {
                let range = c * DOT_CHUNK..d.min((c + 1) * DOT_CHUNK);
                vectorized_for(
                    isa,
                    ChunkDots {
                        vectors,
                        range,
                        acc: &mut acc,
                    },
                );
                acc
            },
        )
        .reduce(|| vec![0.0; n * n * MAX_LANES], add_into);
    let upper: Vec<f64> = lanes
        .chunks_exact(MAX_LANES)
        .map(|l| l.iter().sum())
        .collect();
    symmetric_from_upper(&upper, n, n)
}

/// Elements per chunk of [`gram_of_vectors`]: each lane of a partial sum adds
/// DOT_CHUNK / LANES (64 for f32 on AVX-512) terms in input precision.
const DOT_CHUNK: usize = 1024;
/// Vectors per side of a register tile of dot products (16 accumulators).
const DOT_TILE: usize = 4;

/// Add the lane-wise dot products of all pairs (i <= j) over one chunk into
/// `acc` (`n x n x MAX_LANES`).
struct ChunkDots<'a, E> {
    vectors: &'a [&'a [E]],
    range: std::ops::Range<usize>,
    acc: &'a mut [f64],
}

impl<E: Real> Kernel<E> for ChunkDots<'_, E> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<V: Vector<E>>(self) {
        let n = self.vectors.len();
        let len = self.range.len();
        let full = len / V::LANES * V::LANES;
        // Tasks past the last one read zeros, so every tile is a full 4 x 4.
        let zeros = [E::default(); DOT_CHUNK];
        let ptr = |t: usize| {
            if t < n {
                self.vectors[t][self.range.clone()].as_ptr()
            } else {
                zeros.as_ptr()
            }
        };
        for bi in (0..n).step_by(DOT_TILE) {
            for bj in (bi..n).step_by(DOT_TILE) {
                let xs: [*const E; DOT_TILE] = std::array::from_fn(|u| ptr(bi + u));
                let ys: [*const E; DOT_TILE] = std::array::from_fn(|u| ptr(bj + u));
                let mut sums = [[V::zero(); DOT_TILE]; DOT_TILE];
                for p in (0..full).step_by(V::LANES) {
                    // The same vectors' next chunk, which this thread usually
                    // takes next (a line per vector every 64 bytes).
                    if (p * std::mem::size_of::<E>()).is_multiple_of(64) {
                        ys.iter()
                            .for_each(|y| prefetch(y.wrapping_add(p + DOT_CHUNK)));
                    }
                    let x = xs.map(|x| V::load(x.add(p)));
                    let y = ys.map(|y| V::load(y.add(p)));
                    for (row, xa) in sums.iter_mut().zip(x) {
                        for (s, yb) in row.iter_mut().zip(y) {
                            *s = xa.mul_add(yb, *s);
                        }
                    }
                }
                for (a, row) in sums.iter().enumerate() {
                    for (b, s) in row.iter().enumerate() {
                        let (i, j) = (bi + a, bj + b);
                        if i < n && j < n && i <= j {
                            let lanes = self.acc.as_mut_ptr().add((i * n + j) * MAX_LANES);
                            s.add_to_f64(lanes);
                            for p in full..len {
                                *lanes += (*xs[a].add(p)).to_f64() * (*ys[b].add(p)).to_f64();
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Job<'a, E> {
    blocks: &'a [&'a [E]],
    k: usize,
    /// Number of columns, T k.
    n: usize,
    /// Padded panel / Gram row length (a multiple of the tile width).
    stride: usize,
    rows: std::ops::Range<usize>,
    acc: &'a mut Partial<E>,
}

/// One thread's running Gram (padded, upper triangle) and its packing panel.
struct Partial<E> {
    gram: Vec<f64>,
    panel: Vec<E>,
}

impl<E: Real> Partial<E> {
    fn new(stride: usize) -> Self {
        Self {
            gram: vec![0.0; stride * stride],
            panel: vec![E::default(); BLOCK_ROWS * stride],
        }
    }
}

/// Accumulate `job.rows` into `job.acc`, one block of rows at a time.
///
/// The upper triangle is covered column pair by column pair (2 vectors wide) with
/// tiles of WIDE rows: 2 vectors for the rows above the pair's second vector
/// (each loaded vector used WIDE times, each broadcast twice), 1 vector for the
/// rows that only the second vector needs (see [`tile_plan`]).
///
/// When k is a multiple of every tile side, no tile straddles two tasks and the
/// tiles read the input in place; otherwise each block is first packed into a
/// panel with all T tasks side by side.
struct Accumulate<'a, E, const WIDE: usize>(Job<'a, E>);

/// One microkernel call: the Gram rows `rows..rows + WIDE` against 1 or 2
/// vectors of columns starting at `col`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    rows: usize,
    col: usize,
    vectors: usize,
}

impl<E: Real, const WIDE: usize> Kernel<E> for Accumulate<'_, E, WIDE> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<V: Vector<E>>(self) {
        let job = self.0;
        let (k, n, lanes) = (job.k, job.n, V::LANES);
        // The microkernel reads and writes whole tiles through raw pointers.
        assert!(
            job.stride.is_multiple_of(2 * lanes) && (2 * lanes).is_multiple_of(WIDE),
            "tiles do not fit the padded width"
        );
        let plan = tile_plan(n, lanes, WIDE);
        let in_place = k.is_multiple_of(lanes) && k.is_multiple_of(WIDE);
        let gram = job.acc.gram.as_mut_ptr();
        let mut row0 = job.rows.start;
        while row0 < job.rows.end {
            let rows = BLOCK_ROWS.min(job.rows.end - row0);
            // Address of column `col` in the block's first row, and the row length.
            let panel = job.acc.panel.as_ptr();
            let (at, row_len): (&dyn Fn(usize) -> *const E, usize) = if in_place {
                (
                    &|col| job.blocks[col / k].as_ptr().add(row0 * k + col % k),
                    k,
                )
            } else {
                pack(job.blocks, k, job.stride, row0, rows, &mut job.acc.panel);
                (&|col| panel.add(col), job.stride)
            };
            let mut ahead = Prefetch::new(
                job.blocks,
                k,
                (row0 + PREFETCH_ROWS).min(job.rows.end),
                rows,
                plan.len(),
            );
            for t in &plan {
                ahead.next();
                let out = gram.add(t.rows * job.stride + t.col);
                match t.vectors {
                    1 => tile::<E, V, WIDE, 1>(
                        at(t.rows),
                        [at(t.col)],
                        row_len,
                        rows,
                        out,
                        job.stride,
                    ),
                    _ => tile::<E, V, WIDE, 2>(
                        at(t.rows),
                        [at(t.col), at(t.col + lanes)],
                        row_len,
                        rows,
                        out,
                        job.stride,
                    ),
                }
            }
            ahead.rest();
            row0 += rows;
        }
    }
}

/// The tiles covering the upper triangle of an n x n Gram (see [`Accumulate`]),
/// WIDE rows each: for the column pair at c0 (vectors at c0 and c0 + lanes),
/// rows 0 .. c0 + lanes against both vectors, then rows c0 + lanes .. c0 + 2 lanes
/// against the second. The diagonal blocks' few entries below the diagonal are
/// computed and never read; two vectors per tile, rather than taller one-vector
/// tiles on the diagonal, take fewer loads per FMA (measured 8% faster at
/// (1e6, 16, 4)). No tile starts in the zero padding past row or column n, and a
/// pair whose second vector would start past column n has one vector (reading in
/// place, there is no padding to read).
fn tile_plan(n: usize, lanes: usize, wide: usize) -> Vec<Tile> {
    let mut plan = Vec::new();
    for c0 in (0..n).step_by(2 * lanes) {
        let second = c0 + lanes < n;
        for rows in (0..n.min(c0 + lanes)).step_by(wide) {
            let vectors = if second { 2 } else { 1 };
            plan.push(Tile {
                rows,
                col: c0,
                vectors,
            });
        }
        if second {
            for rows in (c0 + lanes..n.min(c0 + 2 * lanes)).step_by(wide) {
                plan.push(Tile {
                    rows,
                    col: c0 + lanes,
                    vectors: 1,
                });
            }
        }
    }
    plan
}

/// How far ahead of the rows being multiplied the input is prefetched.
const PREFETCH_ROWS: usize = 2 * BLOCK_ROWS;

/// Prefetches the cache lines of a later block of rows, a few before each tile
/// of the current block. Issued all at once, most prefetches would be dropped
/// (too many misses in flight) and the tiles would stall on memory: measured,
/// spreading them takes (1e6, 16, 4) from 23 ms to 15 ms.
struct Prefetch<'a, E> {
    blocks: &'a [&'a [E]],
    /// Element offset of the block in every task.
    start: usize,
    bytes: usize,
    done: usize,
    per_step: usize,
}

impl<'a, E> Prefetch<'a, E> {
    const LINE: usize = 64;

    fn new(blocks: &'a [&'a [E]], k: usize, row0: usize, rows: usize, steps: usize) -> Self {
        let bytes = rows * k * std::mem::size_of::<E>();
        let per_step = bytes.div_ceil(Self::LINE * steps.max(1)) * Self::LINE;
        Self {
            blocks,
            start: row0 * k,
            bytes,
            done: 0,
            per_step,
        }
    }

    #[inline(always)]
    fn next(&mut self) {
        let end = (self.done + self.per_step).min(self.bytes);
        for block in self.blocks {
            let base = block.as_ptr().wrapping_add(self.start) as *const u8;
            for offset in (self.done..end).step_by(Self::LINE) {
                prefetch(base.wrapping_add(offset));
            }
        }
        self.done = end;
    }

    #[inline(always)]
    fn rest(&mut self) {
        while self.done < self.bytes {
            self.next();
        }
    }
}

/// Copy `rows` rows of every block side by side into the panel (row-major,
/// `stride` long; the padding columns stay zero from allocation).
#[inline(always)]
fn pack<E: Real>(
    blocks: &[&[E]],
    k: usize,
    stride: usize,
    row0: usize,
    rows: usize,
    panel: &mut [E],
) {
    for (t, block) in blocks.iter().enumerate() {
        let src = &block[row0 * k..(row0 + rows) * k];
        for (dst, src) in panel.chunks_exact_mut(stride).zip(src.chunks_exact(k)) {
            copy_short(&mut dst[t * k..(t + 1) * k], src);
        }
    }
}

/// `dst.copy_from_slice(src)` for short rows. Pieces of fixed size (runs of 8,
/// then 4, 2 and 1) compile to plain moves; a runtime-length copy would be a
/// `memcpy` call per row, which costs more than the arithmetic.
#[inline(always)]
fn copy_short<E: Copy>(dst: &mut [E], src: &[E]) {
    let mut i = 0;
    while src.len() - i >= 8 {
        dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
        i += 8;
    }
    for piece in [4, 2, 1] {
        if src.len() - i >= piece {
            dst[i..i + piece].copy_from_slice(&src[i..i + piece]);
            i += piece;
        }
    }
}

/// Register-blocked microkernel: over `rows` rows (`row_len` apart), add the
/// products of the RB elements at `bcast` with the CB vectors at `cols` into the
/// f64 Gram tile at `out` (row length `out_stride`).
#[inline(always)]
unsafe fn tile<E: Real, V: Vector<E>, const RB: usize, const CB: usize>(
    bcast: *const E,
    cols: [*const E; CB],
    row_len: usize,
    rows: usize,
    out: *mut f64,
    out_stride: usize,
) {
    let mut acc = [[V::zero(); CB]; RB];
    for i in 0..rows {
        let vecs = cols.map(|c| V::load(c.add(i * row_len)));
        let row = bcast.add(i * row_len);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = V::splat(*row.add(r));
            for (a, v) in acc_r.iter_mut().zip(vecs) {
                *a = x.mul_add(v, *a);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, a) in acc_r.iter().enumerate() {
            a.add_to_f64(out.add(r * out_stride + c * V::LANES));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{naive_gram, to_f32, Rng};

    fn supported() -> Vec<Isa> {
        match detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2Fma, Isa::Portable],
            Isa::Avx2Fma => vec![Isa::Avx2Fma, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    fn check<E: Vectors>(blocks: &[Vec<E>], d: usize, k: usize, rtol: f64) {
        let refs: Vec<&[E]> = blocks.iter().map(Vec::as_slice).collect();
        let want = naive_gram(&refs, d, k);
        let n = refs.len() * k;
        for isa in supported() {
            let got = gram_with(isa, &refs, d, k);
            assert_eq!(got.n, n);
            for a in 0..n {
                for b in 0..n {
                    let scale = (want[a * n + a] * want[b * n + b])
                        .sqrt()
                        .max(f64::MIN_POSITIVE);
                    let err = (got.get(a, b) - want[a * n + b]).abs() / scale;
                    assert!(
                        err <= rtol,
                        "{isa:?} d={d} k={k} entry ({a},{b}): rel err {err:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_naive_gram_for_many_shapes() {
        let mut rng = Rng::new(1);
        // Shapes cover k = 1 (vector path), odd k, padding, partial row blocks
        // and several rayon chunks.
        for &(d, k, t) in &[
            (1, 1, 1),
            (7, 3, 2),
            (100, 5, 3),
            (64, 16, 4),
            (300, 17, 2),
            (CHUNK_ROWS + 77, 8, 3),
            (200, 16, 3),
            (130, 32, 3),
            (70, 16, 1),
            (5000, 1, 8),
            (1030, 1, 3),
        ] {
            let blocks: Vec<Vec<f64>> = (0..t).map(|_| rng.matrix(d, k)).collect();
            check(&blocks, d, k, 1e-12);
            let blocks32: Vec<Vec<f32>> = blocks.iter().map(|b| to_f32(b)).collect();
            check(&blocks32, d, k, 1e-5);
        }
    }

    #[test]
    fn tile_plan_covers_the_upper_triangle_once() {
        for (lanes, wide) in [(16, 8), (8, 8), (8, 4), (4, 4)] {
            for n in 1..=80usize {
                let stride = n.div_ceil(2 * lanes) * 2 * lanes;
                let mut hits = vec![0u32; stride * stride];
                for t in tile_plan(n, lanes, wide) {
                    assert!(
                        t.rows < n && t.col < n,
                        "{t:?} starts in the padding (n={n})"
                    );
                    assert!(t.rows + wide <= stride && t.col + t.vectors * lanes <= stride);
                    for r in t.rows..t.rows + wide {
                        for c in t.col..t.col + t.vectors * lanes {
                            hits[r * stride + c] += 1;
                        }
                    }
                }
                for r in 0..n {
                    for c in r..n {
                        assert_eq!(
                            hits[r * stride + c],
                            1,
                            "entry ({r}, {c}), n={n}, lanes={lanes}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn column_major_blocks_give_the_same_gram() {
        let mut rng = Rng::new(11);
        for (d, k, t) in [(1000, 4, 2), (37, 3, 3), (5, 1, 4)] {
            let rows: Vec<Vec<f32>> = (0..t).map(|_| to_f32(&rng.matrix(d, k))).collect();
            let cols: Vec<Vec<f32>> = rows
                .iter()
                .map(|b| (0..d * k).map(|p| b[(p % d) * k + p / d]).collect())
                .collect();
            let r: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            let c: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
            let (a, b) = (
                gram_in(&r, d, k, Layout::RowMajor),
                gram_in(&c, d, k, Layout::ColMajor),
            );
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                    "{x} vs {y} at d={d} k={k}"
                );
            }
        }
    }

    #[test]
    fn zero_and_nonfinite_columns() {
        let d = 50;
        let mut block = vec![1.0f32; d * 3];
        for i in 0..d {
            block[i * 3 + 1] = 0.0;
        }
        block[10 * 3 + 2] = f32::NAN;
        let g = gram(&[&block], d, 3);
        assert_eq!(g.get(1, 1), 0.0);
        assert_eq!(g.get(0, 0), d as f64);
        assert!(g.get(2, 2).is_nan());
    }
}
