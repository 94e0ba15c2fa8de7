//! Gradient projections: PCGrad surgery, projection onto another task's gradient
//! span, and projection onto the half-space of a second gradient.

use crate::error::{assert_blocks, GeometryError, Result};
use crate::frame::{frame_of, project, rank_tolerance, to_columns};
use crate::gram::Layout;
use crate::gram::{gram, Gram};
use crate::simd::{store_fence, vectorized, Kernel, Real, Vector, Vectors, MAX_LANES};
use faer::Mat;
use rayon::prelude::*;

/// Elements per parallel task in the elementwise passes (T inputs of this
/// length stay in L2 while all outputs for them are formed).
const CHUNK: usize = 4096;

/// PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").
///
/// For each task i, starting from g_i' = g_i, visit the other tasks j in the
/// order `orders[i]` and, if g_i' . g_j < 0, replace g_i' by its projection onto
/// the normal plane of g_j: g_i' -= (g_i' . g_j / |g_j|^2) g_j. The g_j are always
/// the original gradients. Writes the sum of the g_i' into `total` and, if given,
/// the g_i' themselves (row-major T x d) into `projected`.
///
/// Every g_i' is a combination of the originals, so all dot products follow from
/// the T x T Gram: one read pass for the Gram, one pass to form the outputs.
pub fn pcgrad<E: Vectors>(
    grads: &[&[E]],
    d: usize,
    orders: &[Vec<usize>],
    projected: Option<&mut [E]>,
    total: &mut [E],
) -> Result<()> {
    assert_blocks(grads, d, 1);
    let n = grads.len();
    assert!(
        projected.as_ref().is_none_or(|p| p.len() == n * d) && total.len() == d,
        "output buffers have the wrong size"
    );
    check_orders(orders, n)?;
    let a = gram(grads, d, 1);
    if let Some(t) = (0..n).find(|&t| !a.get(t, t).is_finite()) {
        let what = format!("gradient of task {t}");
        return Err(match has_non_finite(grads[t]) {
            true => GeometryError::NonFinite { what },
            false => GeometryError::Invalid(format!(
                "{what} is too large: its squared norm overflows float64"
            )),
        });
    }
    let coef = pcgrad_coefficients(&a, orders);
    let total_coef: Vec<f64> = (0..n)
        .map(|j| (0..n).map(|i| coef[i * n + j]).sum())
        .collect();

    // Each parallel task gets its chunk of every output row (safe disjoint
    // borrows): the projected rows (if wanted), then the total.
    let mut rows: Vec<_> = projected
        .into_iter()
        .flat_map(|p| p.chunks_mut(d))
        .map(|row| row.chunks_mut(CHUNK))
        .collect();
    let per_chunk: Vec<Vec<&mut [E]>> = total
        .chunks_mut(CHUNK)
        .map(|total_chunk| {
            let mut outs: Vec<&mut [E]> = rows.iter_mut().map(|r| r.next().unwrap()).collect();
            outs.push(total_chunk);
            outs
        })
        .collect();
    per_chunk
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut outs)| {
            let start = c * CHUNK;
            let inputs: Vec<&[E]> = grads
                .iter()
                .map(|g| &g[start..start + CHUNK.min(d - start)])
                .collect();
            let last = outs.len() - 1;
            for (i, out) in outs.iter_mut().enumerate() {
                let weights = if i < last {
                    &coef[i * n..(i + 1) * n]
                } else {
                    &total_coef[..]
                };
                vectorized(Combine {
                    inputs: &inputs,
                    weights,
                    out,
                });
            }
        });
    Ok(())
}

/// PCGrad as weights: `coef[i * n + j]` is the weight of g_j in g_i', found
/// from the Gram `a` alone by running the projections on coefficient vectors.
fn pcgrad_coefficients(a: &Gram, orders: &[Vec<usize>]) -> Vec<f64> {
    let n = orders.len();
    let mut coef = vec![0.0; n * n];
    for (i, order) in orders.iter().enumerate() {
        let c = &mut coef[i * n..(i + 1) * n];
        c[i] = 1.0;
        for &j in order {
            let dot: f64 = (0..n).map(|l| c[l] * a.get(l, j)).sum();
            if dot < 0.0 {
                // dot < 0 implies |g_j|^2 > 0.
                c[j] -= dot / a.get(j, j);
            }
        }
    }
    coef
}

/// `out = sum_j weights[j] * inputs[j]` in input precision (the error is at the
/// level of the inputs' own rounding), skipping zero weights. Every element gets
/// the same sequence of FMAs, however the output is aligned or chunked.
struct Combine<'a, E> {
    inputs: &'a [&'a [E]],
    weights: &'a [f64],
    out: &'a mut [E],
}

impl<E: Real> Kernel<E> for Combine<'_, E> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<V: Vector<E>>(self) {
        let terms: Vec<(*const E, V)> = self
            .inputs
            .iter()
            .zip(self.weights)
            .filter(|(_, &w)| w != 0.0)
            .map(|(x, &w)| (x.as_ptr(), V::splat(E::from_f64(w))))
            .collect();
        let len = self.out.len();
        let out = self.out.as_mut_ptr();
        let lanes = V::LANES;
        // Fewer than `lanes` elements, through a zero-padded vector.
        let partial = |p: usize, count: usize| {
            let mut acc = V::zero();
            for &(x, w) in &terms {
                let mut buf = [E::default(); MAX_LANES];
                std::ptr::copy_nonoverlapping(x.add(p), buf.as_mut_ptr(), count);
                acc = w.mul_add(V::load(buf.as_ptr()), acc);
            }
            let mut buf = [E::default(); MAX_LANES];
            acc.store(buf.as_mut_ptr());
            std::ptr::copy_nonoverlapping(buf.as_ptr(), out.add(p), count);
        };
        // Head up to a vector-aligned address, so the body can stream its stores
        // past the caches: the output is not read again here, and streaming
        // saves reading each output line before writing it.
        let align = lanes * std::mem::size_of::<E>();
        let head = ((align - out as usize % align) % align / std::mem::size_of::<E>()).min(len);
        partial(0, head);
        // Four vectors of outputs at a time: four independent FMA chains.
        const UNROLL: usize = 4;
        let step = UNROLL * lanes;
        let body_end = head + (len - head) / step * step;
        for p in (head..body_end).step_by(step) {
            let mut acc = [V::zero(); UNROLL];
            for &(x, w) in &terms {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = w.mul_add(V::load(x.add(p + u * lanes)), *a);
                }
            }
            for (u, a) in acc.into_iter().enumerate() {
                a.stream(out.add(p + u * lanes));
            }
        }
        store_fence();
        let mut p = body_end;
        while p < len {
            let count = lanes.min(len - p);
            partial(p, count);
            p += count;
        }
    }
}

fn check_orders(orders: &[Vec<usize>], n: usize) -> Result<()> {
    if orders.len() != n {
        return Err(GeometryError::Invalid(format!(
            "orders: need one visiting order per task ({n}), got {}",
            orders.len()
        )));
    }
    match (0..n).find(|&i| !is_permutation_of_others(&orders[i], i, n)) {
        Some(i) => Err(GeometryError::Invalid(format!(
            "orders[{i}] (the visiting order of task {i}) must be a permutation of the other tasks"
        ))),
        None => Ok(()),
    }
}

/// `order` holds every task index except `i` exactly once.
fn is_permutation_of_others(order: &[usize], i: usize, n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n - 1
        && order
            .iter()
            .all(|&j| j < n && j != i && !std::mem::replace(&mut seen[j], true))
}

fn has_non_finite<E: Vectors>(x: &[E]) -> bool {
    x.par_chunks(CHUNK)
        .any(|c| vectorized(NanProbe(c)).is_nan())
}

/// Sum of `x * 0` over a slice: 0 if all values are finite, NaN otherwise (a sum
/// vectorises where an early-exit search does not).
struct NanProbe<'a, E>(&'a [E]);

impl<E: Real> Kernel<E> for NanProbe<'_, E> {
    type Output = f64;
    #[inline(always)]
    unsafe fn run<V: Vector<E>>(self) -> f64 {
        let mut lanes = [0.0f64; 16];
        for c in self.0.chunks(16) {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v.to_f64() * 0.0;
            }
        }
        lanes.iter().sum()
    }
}

/// Projection of `g` onto span(G) (`G` row-major `d x k`) and onto its
/// orthogonal complement, written into `parallel` and `orthogonal`.
/// Rank-deficient G is fine (zero or dependent columns add nothing); a G of
/// rank 0 gives parallel = 0, orthogonal = g.
pub fn project_onto_span<E: Vectors>(
    g: &[E],
    basis: &[E],
    d: usize,
    k: usize,
    parallel: &mut [E],
    orthogonal: &mut [E],
) -> Result<()> {
    assert_blocks(&[g], d, 1);
    assert_blocks(&[basis], d, k);
    assert!(
        parallel.len() == d && orthogonal.len() == d,
        "output buffers have the wrong size"
    );
    let frame = frame_of(
        to_columns(basis, d, k, Layout::RowMajor),
        rank_tolerance::<E>(k),
        &|| "G".to_string(),
    )?;
    let g64 = to_columns(g, d, 1, Layout::RowMajor);
    let par: Mat<f64> = project(&frame, g64.as_ref());
    // NaN/inf in g is found while the outputs are written (no pass of its own).
    let finite = parallel
        .par_iter_mut()
        .zip(orthogonal.par_iter_mut())
        .enumerate()
        .map(|(i, (p, o))| {
            *p = E::from_f64(par[(i, 0)]);
            *o = E::from_f64(g64[(i, 0)] - par[(i, 0)]);
            g64[(i, 0)].is_finite()
        })
        .all(|ok| ok);
    match finite {
        true => Ok(()),
        false => Err(GeometryError::NonFinite { what: "g".into() }),
    }
}

/// The vector nearest to `g1` that does not conflict with `g2`:
/// `out = g1 - min(0, g1.g2) / |g2|^2 g2`, so `out . g2 >= 0`; `g2 = 0` gives
/// `out = g1`.
pub fn project_halfspace<E: Vectors>(g1: &[E], g2: &[E], out: &mut [E]) -> Result<()> {
    let d = g1.len();
    assert_blocks(&[g1, g2], d, 1);
    assert_eq!(out.len(), d, "output buffer has the wrong size");
    let sums = g1
        .par_chunks(CHUNK)
        .zip(g2.par_chunks(CHUNK))
        .map(|(a, b)| vectorized(HalfspaceSums(a, b)))
        .reduce(
            || [0.0; 4],
            |s, t| [s[0] + t[0], s[1] + t[1], s[2] + t[2], s[3] + t[3]],
        );
    let [g12, g22, probe1, probe2] = sums;
    if probe1.is_nan() {
        return Err(GeometryError::NonFinite { what: "g1".into() });
    }
    if probe2.is_nan() {
        return Err(GeometryError::NonFinite { what: "g2".into() });
    }
    if !(g12.is_finite() && g22.is_finite()) {
        return Err(GeometryError::Invalid(
            "g1 or g2 is too large: their dot products overflow float64".into(),
        ));
    }
    let w = if g12 < 0.0 { -g12 / g22 } else { 0.0 };
    out.par_chunks_mut(CHUNK)
        .zip(g1.par_chunks(CHUNK).zip(g2.par_chunks(CHUNK)))
        .for_each(|(out, (a, b))| {
            let inputs = [a, b];
            vectorized(Combine {
                inputs: &inputs,
                weights: &[1.0, w],
                out,
            })
        });
    Ok(())
}

/// (g1.g2, g2.g2, NaN probe of g1, NaN probe of g2) over one chunk, in f64.
struct HalfspaceSums<'a, E>(&'a [E], &'a [E]);

impl<E: Real> Kernel<E> for HalfspaceSums<'_, E> {
    type Output = [f64; 4];
    #[inline(always)]
    unsafe fn run<V: Vector<E>>(self) -> [f64; 4] {
        // Lane-wise partial sums: one running sum would serialise on the adds.
        const LANES: usize = 16;
        let mut s = [[0.0f64; LANES]; 4];
        for (a, b) in self.0.chunks(LANES).zip(self.1.chunks(LANES)) {
            for (l, (&x, &y)) in a.iter().zip(b).enumerate() {
                let (x, y) = (x.to_f64(), y.to_f64());
                s[0][l] += x * y;
                s[1][l] += y * y;
                s[2][l] += x * 0.0;
                s[3][l] += y * 0.0;
            }
        }
        s.map(|lanes| lanes.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_f32, Rng};

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Yu et al.'s procedure, literally, on vectors.
    fn naive_pcgrad(grads: &[Vec<f64>], orders: &[Vec<usize>]) -> Vec<Vec<f64>> {
        grads
            .iter()
            .zip(orders)
            .map(|(gi, order)| {
                let mut g = gi.clone();
                for &j in order {
                    let dj = dot(&g, &grads[j]);
                    if dj < 0.0 {
                        let w = dj / dot(&grads[j], &grads[j]);
                        g.iter_mut().zip(&grads[j]).for_each(|(x, y)| *x -= w * y);
                    }
                }
                g
            })
            .collect()
    }

    fn shuffled_orders(rng: &mut Rng, n: usize) -> Vec<Vec<usize>> {
        (0..n)
            .map(|i| {
                let mut o: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                for a in (1..o.len()).rev() {
                    o.swap(a, (rng.next_u64() % (a as u64 + 1)) as usize);
                }
                o
            })
            .collect()
    }

    fn run_pcgrad<E: Vectors>(grads: &[Vec<E>], orders: &[Vec<usize>]) -> (Vec<E>, Vec<E>) {
        let d = grads[0].len();
        let refs: Vec<&[E]> = grads.iter().map(Vec::as_slice).collect();
        let (mut p, mut t) = (vec![E::default(); grads.len() * d], vec![E::default(); d]);
        pcgrad(&refs, d, orders, Some(&mut p), &mut t).unwrap();
        (p, t)
    }

    #[test]
    fn pcgrad_matches_naive_procedure() {
        let mut rng = Rng::new(11);
        for &(n, d) in &[(2, 10), (5, 1000), (8, CHUNK * 2 + 33)] {
            // A shared direction with large noise: a mix of conflicting and agreeing pairs.
            let shared: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let grads: Vec<Vec<f64>> = (0..n)
                .map(|_| shared.iter().map(|s| 0.2 * s + rng.normal()).collect())
                .collect();
            let orders = shuffled_orders(&mut rng, n);
            let want = naive_pcgrad(&grads, &orders);
            let (p, t) = run_pcgrad(&grads, &orders);
            for i in 0..n {
                for x in 0..d {
                    assert!((p[i * d + x] - want[i][x]).abs() < 1e-10);
                }
            }
            let refs: Vec<&[f64]> = grads.iter().map(Vec::as_slice).collect();
            let mut total_only = vec![0.0; d];
            pcgrad(&refs, d, &orders, None, &mut total_only).unwrap();
            assert_eq!(total_only, t);
            for x in 0..d {
                let sum: f64 = want.iter().map(|w| w[x]).sum();
                assert!((t[x] - sum).abs() < 1e-10);
            }
            let grads32: Vec<Vec<f32>> = grads.iter().map(|g| to_f32(g)).collect();
            let exact: Vec<Vec<f64>> = grads32
                .iter()
                .map(|g| g.iter().map(|&v| v as f64).collect())
                .collect();
            let want = naive_pcgrad(&exact, &orders);
            let (p, _) = run_pcgrad(&grads32, &orders);
            for i in 0..n {
                for x in 0..d {
                    assert!((p[i * d + x] as f64 - want[i][x]).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn outputs_do_not_depend_on_alignment() {
        let mut rng = Rng::new(14);
        let d = CHUNK + 101;
        let grads: Vec<Vec<f32>> = (0..3).map(|_| to_f32(&rng.matrix(d, 1))).collect();
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let orders = shuffled_orders(&mut rng, 3);
        let mut buf = vec![0.0f32; d + 16];
        let mut first: Option<Vec<f32>> = None;
        for offset in 0..16 {
            pcgrad(&refs, d, &orders, None, &mut buf[offset..offset + d]).unwrap();
            let got = buf[offset..offset + d].to_vec();
            assert_eq!(
                *first.get_or_insert_with(|| got.clone()),
                got,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn pcgrad_two_tasks_leaves_no_conflict() {
        let g1 = vec![1.0f64, 0.0, 2.0];
        let g2 = vec![-1.0, 1.0, 0.0];
        let (p, t) = run_pcgrad(&[g1, g2.clone()], &[vec![1], vec![0]]);
        // g1' = g1 + (1/2) g2 = (0.5, 0.5, 2); g2' = g2 + (1/5) g1 = (-0.8, 1, 0.4).
        let want = [0.5, 0.5, 2.0, -0.8, 1.0, 0.4];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        assert!(dot(&p[..3], &g2).abs() < 1e-15);
        assert!((t[0] - -0.3).abs() < 1e-15);
    }

    #[test]
    fn pcgrad_zero_gradient_and_errors() {
        let (p, _) = run_pcgrad(&[vec![1.0, 2.0], vec![0.0, 0.0]], &[vec![1], vec![0]]);
        assert_eq!(p, vec![1.0, 2.0, 0.0, 0.0]);
        let g = [1.0f64, 2.0];
        let (mut p, mut t) = (vec![0.0; 4], vec![0.0; 2]);
        for orders in [
            vec![vec![0], vec![0]],
            vec![vec![1]],
            vec![vec![1], vec![0, 0]],
            vec![vec![2], vec![0]],
        ] {
            let err = pcgrad(&[&g, &g], 2, &orders, Some(&mut p), &mut t).unwrap_err();
            assert!(matches!(err, GeometryError::Invalid(_)), "{orders:?}");
        }
        let bad = [1.0, f64::NAN];
        let err = pcgrad(&[&g, &bad], 2, &[vec![1], vec![0]], Some(&mut p), &mut t).unwrap_err();
        assert_eq!(
            err,
            GeometryError::NonFinite {
                what: "gradient of task 1".into()
            }
        );
        let huge = [1e200, 1.0];
        let err = pcgrad(&[&huge, &g], 2, &[vec![1], vec![0]], None, &mut t).unwrap_err();
        assert!(matches!(err, GeometryError::Invalid(_)));
    }

    #[test]
    fn halfspace_projection() {
        let mut out = vec![0.0; 3];
        project_halfspace(&[1.0, 0.0, 1.0], &[-1.0, 1.0, 0.0], &mut out).unwrap();
        assert_eq!(out, vec![0.5, 0.5, 1.0]);
        // No conflict: unchanged. Zero g2: unchanged.
        project_halfspace(&[1.0, 0.0, 1.0], &[1.0, 1.0, 0.0], &mut out).unwrap();
        assert_eq!(out, vec![1.0, 0.0, 1.0]);
        project_halfspace(&[1.0, 0.0, 1.0], &[0.0; 3], &mut out).unwrap();
        assert_eq!(out, vec![1.0, 0.0, 1.0]);
        let mut rng = Rng::new(12);
        let (a, b) = (
            to_f32(&rng.matrix(CHUNK * 3 + 5, 1)),
            to_f32(&rng.matrix(CHUNK * 3 + 5, 1)),
        );
        let b: Vec<f32> = b.iter().zip(&a).map(|(y, x)| y - x).collect();
        let mut out = vec![0.0f32; a.len()];
        project_halfspace(&a, &b, &mut out).unwrap();
        let along: f64 = out.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let norm: f64 = b.iter().map(|&y| y as f64 * y as f64).sum::<f64>().sqrt();
        assert!(along.abs() <= 1e-5 * norm * norm, "{along}");
        let err = project_halfspace(&[1.0, f64::INFINITY], &[1.0, 1.0], &mut [0.0; 2]).unwrap_err();
        assert_eq!(err, GeometryError::NonFinite { what: "g1".into() });
        let err = project_halfspace(&[1.0, 1.0], &[f64::NAN, 1.0], &mut [0.0; 2]).unwrap_err();
        assert_eq!(err, GeometryError::NonFinite { what: "g2".into() });
    }

    #[test]
    fn span_projection_is_orthogonal_and_idempotent() {
        let mut rng = Rng::new(13);
        let (d, k) = (200, 4);
        let mut basis = rng.matrix(d, k);
        for i in 0..d {
            basis[i * k + 3] = basis[i * k] - basis[i * k + 1]; // rank 3
        }
        let g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let (mut par, mut orth) = (vec![0.0; d], vec![0.0; d]);
        project_onto_span(&g, &basis, d, k, &mut par, &mut orth).unwrap();
        for j in 0..k {
            let col: Vec<f64> = (0..d).map(|i| basis[i * k + j]).collect();
            assert!(dot(&col, &orth).abs() < 1e-10 * dot(&col, &col).sqrt() * dot(&g, &g).sqrt());
        }
        let (mut par2, mut orth2) = (vec![0.0; d], vec![0.0; d]);
        project_onto_span(&par, &basis, d, k, &mut par2, &mut orth2).unwrap();
        assert!(par.iter().zip(&par2).all(|(a, b)| (a - b).abs() < 1e-12));
        assert!(orth2.iter().all(|x| x.abs() < 1e-12));
        for i in 0..d {
            assert!((par[i] + orth[i] - g[i]).abs() < 1e-12);
        }
        // Rank-0 G: nothing to project onto.
        project_onto_span(&g, &vec![0.0; d * k], d, k, &mut par, &mut orth).unwrap();
        assert!(par.iter().all(|&x| x == 0.0) && orth == g);
        // NaN or inf in either input is named.
        for (bad, zero_basis) in [(f64::NAN, false), (f64::INFINITY, true)] {
            let mut g_bad = g.clone();
            g_bad[d - 1] = bad;
            let b = if zero_basis {
                vec![0.0; d * k]
            } else {
                basis.clone()
            };
            let err = project_onto_span(&g_bad, &b, d, k, &mut par, &mut orth).unwrap_err();
            assert_eq!(err, GeometryError::NonFinite { what: "g".into() });
        }
        let mut b_bad = basis.clone();
        b_bad[7] = f64::NAN;
        let err = project_onto_span(&g, &b_bad, d, k, &mut par, &mut orth).unwrap_err();
        assert_eq!(err, GeometryError::NonFinite { what: "G".into() });
    }
}
