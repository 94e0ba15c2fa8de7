//! Principal angles between every pair of tasks' gradient spans, plus the cosine
//! similarity of the tasks' mean gradients, in one call.
//!
//! float32 input takes the fast path: one streaming pass builds the Gram matrix of
//! all T k samples (gram.rs) and everything else works on k x k blocks in f64:
//! * per task, the column-equilibrated Gram block C = V L V^T gives the whitener
//!   W = D^-1 V L^-1/2, so that G W is an orthonormal basis of span(G);
//! * per pair, cos(theta) are the singular values of M = W_s^T A_st W_t and
//!   sin^2(theta) the eigenvalues of I - M^T M.
//!
//! Both steps square condition numbers, so a task whose equilibrated Gram block is
//! ill-conditioned, or a pair with a small angle (Gram-based sines keep only half
//! the digits), is recomputed on the QR path (frame.rs) from the original data.
//! float64 input always takes the QR path: it is meant for ~1e-8 rad accuracy at
//! small angles, out of reach of any Gram-based sine.

use crate::error::{assert_blocks, GeometryError, Result};
use crate::frame::{angle_from, frame_angles, frame_of, rank_tolerance, to_columns, Frame};
use crate::gram::{gram_in, Gram, Layout};
use crate::simd::{Real, Vectors};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;
use std::f64::consts::FRAC_PI_2;

/// Largest eigenvalue ratio of a column-equilibrated Gram block (= condition
/// number squared of the equilibrated samples) the Gram path accepts. With the
/// Gram's relative error delta (~1e-9 typical for f32 input, see gram.rs), angle
/// errors grow like delta * ratio.
const MAX_GRAM_CONDITION: f64 = 1e4;
/// Smallest sin^2 of a principal angle the Gram path reports (angles below about
/// 0.1 rad go to the QR path): sin^2 from a Gram has an absolute error of about
/// delta * condition, so small sines have few correct digits.
const MIN_GRAM_SIN2: f64 = 1e-2;

/// Result of [`subspace_geometry`] for T tasks with k samples each.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub tasks: usize,
    pub k: usize,
    /// `angles[(s * tasks + t) * k + i]`: the i-th smallest principal angle
    /// between span(G_s) and span(G_t) in radians; directions missing from the
    /// smaller span (rank deficiency) are reported as pi/2.
    pub angles: Vec<f64>,
    /// `mean_cosine[s * tasks + t]`: cosine between the tasks' mean gradients;
    /// 0 when either mean is zero (see [`mean_is_zero`]).
    pub mean_cosine: Vec<f64>,
    /// Numerical rank of each task's samples.
    pub ranks: Vec<usize>,
    /// `qr_pairs[s * tasks + t]`: the pair was computed on the QR path.
    pub qr_pairs: Vec<bool>,
}

/// Principal angles and mean-gradient cosines of T tasks, each `tasks[t]` a
/// row-major `d x k` slice of gradient samples.
pub fn subspace_geometry<E: Vectors>(tasks: &[&[E]], d: usize, k: usize) -> Result<Geometry> {
    subspace_geometry_in(tasks, d, k, Layout::RowMajor)
}

/// [`subspace_geometry`] for samples stored in either [`Layout`].
pub fn subspace_geometry_in<E: Vectors>(
    tasks: &[&[E]],
    d: usize,
    k: usize,
    layout: Layout,
) -> Result<Geometry> {
    assert_blocks(tasks, d, k);
    if E::UNIT_ROUNDOFF < f32::EPSILON as f64 / 2.0 {
        qr_geometry(tasks, d, k, layout)
    } else {
        gram_geometry(tasks, d, k, layout)
    }
}

fn task_error(t: usize) -> GeometryError {
    GeometryError::NonFinite {
        what: format!("gradient samples of task {t}"),
    }
}

fn gram_geometry<E: Vectors>(
    tasks: &[&[E]],
    d: usize,
    k: usize,
    layout: Layout,
) -> Result<Geometry> {
    let n_tasks = tasks.len();
    let a = gram_in(tasks, d, k, layout);
    // A NaN or inf anywhere in a column makes its squared norm NaN or inf; finite
    // f32 values cannot overflow an f64 sum of squares.
    if let Some(t) =
        (0..n_tasks).find(|&t| (0..k).any(|i| !a.get(t * k + i, t * k + i).is_finite()))
    {
        return Err(task_error(t));
    }
    let block = |s: usize, t: usize| Mat::from_fn(k, k, |i, j| a.get(s * k + i, t * k + j));
    let whiteners = (0..n_tasks)
        .into_par_iter()
        .map(|t| whitener(block(t, t).as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(usize, usize)> = (0..n_tasks)
        .flat_map(|s| (s + 1..n_tasks).map(move |t| (s, t)))
        .collect();
    let gram_angles = pairs
        .par_iter()
        .map(|&(s, t)| match (&whiteners[s], &whiteners[t]) {
            (Some(ws), Some(wt)) => {
                gram_pair_angles(ws.as_ref(), wt.as_ref(), block(s, t).as_ref(), k)
            }
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;

    // Tasks the Gram path could not handle, alone or in some pair, get a frame.
    let mut needs_frame: Vec<bool> = whiteners.iter().map(Option::is_none).collect();
    for (&(s, t), angles) in pairs.iter().zip(&gram_angles) {
        if angles.is_none() {
            needs_frame[s] = true;
            needs_frame[t] = true;
        }
    }
    let frames = (0..n_tasks)
        .into_par_iter()
        .map(|t| match needs_frame[t] {
            true => frame_of(
                to_columns(tasks[t], d, k, layout),
                rank_tolerance::<E>(k),
                &|| task_error(t).to_string(),
            )
            .map(Some),
            false => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let ranks: Vec<usize> = (0..n_tasks)
        .map(|t| match (&frames[t], &whiteners[t]) {
            (Some(f), _) => f.rank(),
            (None, Some(w)) => w.ncols(),
            (None, None) => unreachable!("a task without whitener always gets a frame"),
        })
        .collect();

    let mut out = Geometry::new(n_tasks, k, ranks);
    let qr_angles = pairs
        .par_iter()
        .zip(&gram_angles)
        .map(|(&(s, t), angles)| match angles {
            Some(_) => Ok(None),
            None => {
                frame_angles(frames[s].as_ref().unwrap(), frames[t].as_ref().unwrap(), k).map(Some)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    for ((&(s, t), from_gram), from_qr) in pairs.iter().zip(gram_angles).zip(qr_angles) {
        out.qr_pairs[s * n_tasks + t] = from_qr.is_some();
        out.qr_pairs[t * n_tasks + s] = from_qr.is_some();
        out.set_pair(s, t, &from_gram.or(from_qr).unwrap());
    }
    out.mean_cosine = mean_cosine_from_gram(&a, n_tasks, k, mean_zero_tolerance::<E>());
    Ok(out)
}

fn qr_geometry<E: Vectors>(tasks: &[&[E]], d: usize, k: usize, layout: Layout) -> Result<Geometry> {
    let n_tasks = tasks.len();
    let per_task = (0..n_tasks)
        .into_par_iter()
        .map(|t| {
            let cols = to_columns(tasks[t], d, k, layout);
            let mean = mean_direction(cols.as_ref(), mean_zero_tolerance::<E>())
                .ok_or_else(|| task_error(t))?;
            let frame = frame_of(cols, rank_tolerance::<E>(k), &|| task_error(t).to_string())?;
            Ok((frame, mean))
        })
        .collect::<Result<Vec<(Frame, Option<Mat<f64>>)>>>()?;
    let mut out = Geometry::new(n_tasks, k, per_task.iter().map(|(f, _)| f.rank()).collect());
    let pairs: Vec<(usize, usize)> = (0..n_tasks)
        .flat_map(|s| (s + 1..n_tasks).map(move |t| (s, t)))
        .collect();
    let angles = pairs
        .par_iter()
        .map(|&(s, t)| frame_angles(&per_task[s].0, &per_task[t].0, k))
        .collect::<Result<Vec<_>>>()?;
    for (&(s, t), angles) in pairs.iter().zip(angles) {
        out.qr_pairs[s * n_tasks + t] = true;
        out.qr_pairs[t * n_tasks + s] = true;
        out.set_pair(s, t, &angles);
    }
    out.mean_cosine = symmetric(n_tasks, |s, t| match (&per_task[s].1, &per_task[t].1) {
        (Some(_), Some(_)) if s == t => 1.0,
        (Some(ms), Some(mt)) => (ms.transpose() * mt)[(0, 0)].clamp(-1.0, 1.0),
        _ => 0.0,
    });
    Ok(out)
}

impl Geometry {
    /// Empty result with the self-pairs filled in: a span has angle 0 to itself
    /// in each of its `rank` directions and pi/2 in the missing ones.
    fn new(tasks: usize, k: usize, ranks: Vec<usize>) -> Self {
        let mut angles = vec![FRAC_PI_2; tasks * tasks * k];
        for (t, &r) in ranks.iter().enumerate() {
            angles[(t * tasks + t) * k..][..r].fill(0.0);
        }
        let qr_pairs = vec![false; tasks * tasks];
        Self {
            tasks,
            k,
            angles,
            mean_cosine: vec![0.0; tasks * tasks],
            ranks,
            qr_pairs,
        }
    }

    fn set_pair(&mut self, s: usize, t: usize, angles: &[f64]) {
        let (n, k) = (self.tasks, self.k);
        self.angles[(s * n + t) * k..][..k].copy_from_slice(angles);
        self.angles[(t * n + s) * k..][..k].copy_from_slice(angles);
    }
}

/// Whitener W (k x rank) with G W orthonormal, from the task's Gram block, or
/// `None` when the block is too ill-conditioned to trust. Zero columns get zero
/// rows in W (they add nothing to the span).
fn whitener(a: MatRef<'_, f64>) -> Result<Option<Mat<f64>>> {
    let k = a.nrows();
    let norms: Vec<f64> = (0..k).map(|i| a[(i, i)].sqrt()).collect();
    let kept: Vec<usize> = (0..k).filter(|&i| norms[i] > 0.0).collect();
    let r = kept.len();
    if r == 0 {
        return Ok(Some(Mat::zeros(k, 0)));
    }
    let c = Mat::from_fn(r, r, |i, j| {
        a[(kept[i], kept[j])] / (norms[kept[i]] * norms[kept[j]])
    });
    let eig = c.self_adjoint_eigen(Side::Lower)?;
    let lambda = eig.S().column_vector();
    if lambda[0] * MAX_GRAM_CONDITION <= lambda[r - 1] {
        return Ok(None);
    }
    let mut w = Mat::<f64>::zeros(k, r);
    for (p, &i) in kept.iter().enumerate() {
        for j in 0..r {
            w[(i, j)] = eig.U()[(p, j)] / (norms[i] * lambda[j].sqrt());
        }
    }
    Ok(Some(w))
}

/// Angles of one pair from the Gram blocks, or `None` if some angle is too small
/// for the Gram path to resolve.
fn gram_pair_angles(
    ws: MatRef<'_, f64>,
    wt: MatRef<'_, f64>,
    a_st: MatRef<'_, f64>,
    k: usize,
) -> Result<Option<Vec<f64>>> {
    let m_dim = ws.ncols().min(wt.ncols());
    let mut angles = vec![FRAC_PI_2; k];
    if m_dim == 0 {
        return Ok(Some(angles));
    }
    let m = ws.transpose() * a_st * wt;
    let cos = m.singular_values()?;
    // I - M^T M on the smaller side: its eigenvalues are sin^2 of the angles.
    let mtm = if wt.ncols() <= ws.ncols() {
        m.transpose() * &m
    } else {
        &m * m.transpose()
    };
    let resid = Mat::from_fn(
        m_dim,
        m_dim,
        |i, j| if i == j { 1.0 } else { 0.0 } - mtm[(i, j)],
    );
    let sin2 = resid.self_adjoint_eigenvalues(Side::Lower)?;
    if sin2[0] < MIN_GRAM_SIN2 {
        return Ok(None);
    }
    for i in 0..m_dim {
        angles[i] = angle_from(sin2[i].sqrt(), cos[i]);
    }
    Ok(Some(angles))
}

/// A mean gradient counts as zero when its norm is at most `sqrt(eps)` of the
/// input type times the average norm of the task's samples: below that it is
/// rounding noise of the cancellation that produced it.
pub fn mean_zero_tolerance<E: Real>() -> f64 {
    (2.0 * E::UNIT_ROUNDOFF).sqrt()
}

/// Mean-gradient cosines from the Gram: m_s . m_t = (1/k^2) sum of block (s, t).
fn mean_cosine_from_gram(a: &Gram, n_tasks: usize, k: usize, zero_tol: f64) -> Vec<f64> {
    let block_sum = |s: usize, t: usize| -> f64 {
        let mut sum = 0.0;
        for i in 0..k {
            for j in 0..k {
                sum += a.get(s * k + i, t * k + j);
            }
        }
        sum
    };
    // k^2 |m_t|^2, or None for a zero mean.
    let sq: Vec<Option<f64>> = (0..n_tasks)
        .map(|t| {
            let sq = block_sum(t, t).max(0.0);
            let norm_sum: f64 = (0..k).map(|i| a.get(t * k + i, t * k + i).sqrt()).sum();
            (sq.sqrt() > zero_tol * norm_sum).then_some(sq)
        })
        .collect();
    symmetric(n_tasks, |s, t| match (sq[s], sq[t]) {
        (Some(_), Some(_)) if s == t => 1.0,
        (Some(ss), Some(tt)) => (block_sum(s, t) / (ss * tt).sqrt()).clamp(-1.0, 1.0),
        _ => 0.0,
    })
}

/// The n x n symmetric matrix with entries `f(s, t)` for s <= t.
fn symmetric(n: usize, f: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for s in 0..n {
        for t in s..n {
            out[s * n + t] = f(s, t);
            out[t * n + s] = out[s * n + t];
        }
    }
    out
}

/// Unit mean column of `cols` (d x 1), `Some(None)` when the mean is zero in the
/// sense of [`mean_zero_tolerance`], and `None` when a column is not finite.
fn mean_direction(cols: MatRef<'_, f64>, zero_tol: f64) -> Option<Option<Mat<f64>>> {
    let k = cols.ncols();
    let mut norm_sum = 0.0;
    for j in 0..k {
        let n = cols.col(j).norm_l2();
        if !n.is_finite() {
            return None;
        }
        norm_sum += n;
    }
    let ones = Mat::from_fn(k, 1, |_, _| 1.0 / k as f64);
    let mut mean = Mat::<f64>::zeros(cols.nrows(), 1);
    matmul(
        mean.as_mut(),
        Accum::Replace,
        cols,
        ones.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let norm = mean.norm_l2();
    if norm <= zero_tol * norm_sum / k as f64 {
        return Some(None);
    }
    mean.col_mut(0).iter_mut().for_each(|x| *x /= norm);
    Some(Some(mean))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_f32, Rng};

    /// Row-major d x k matrix with the given columns (each of length d).
    fn from_columns(cols: &[Vec<f64>]) -> Vec<f64> {
        let (d, k) = (cols[0].len(), cols.len());
        (0..d * k).map(|x| cols[x % k][x / k]).collect()
    }

    /// G M for a row-major d x k matrix G and a k x k matrix M.
    fn mix(g: &[f64], d: usize, k: usize, m: &[f64]) -> Vec<f64> {
        (0..d * k)
            .map(|x| (0..k).map(|l| g[(x / k) * k + l] * m[l * k + x % k]).sum())
            .collect()
    }

    fn unit(d: usize, i: usize) -> Vec<f64> {
        (0..d).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
    }

    fn pair(g: &Geometry, s: usize, t: usize) -> &[f64] {
        &g.angles[(s * g.tasks + t) * g.k..][..g.k]
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    /// Spans with principal angles 0.3 and 1.1, mixed by well-conditioned M, plus
    /// a tiny-angle pair.
    fn known_pairs(rng: &mut Rng) -> (Vec<Vec<f64>>, usize) {
        let d = 40;
        let (a, b, tiny) = (0.3f64, 1.1f64, 1e-7f64);
        let comb = |x: f64, i: usize, j: usize| -> Vec<f64> {
            unit(d, i)
                .iter()
                .zip(unit(d, j))
                .map(|(p, q)| x.cos() * p + x.sin() * q)
                .collect()
        };
        let s = from_columns(&[unit(d, 0), unit(d, 1)]);
        let t = from_columns(&[comb(a, 0, 2), comb(b, 1, 3)]);
        let u = from_columns(&[comb(tiny, 0, 5), unit(d, 1)]);
        let m: Vec<f64> = (0..4)
            .map(|i| if i % 3 == 0 { 2.0 } else { 0.0 } + 0.5 * rng.uniform())
            .collect();
        (vec![mix(&s, d, 2, &m), mix(&t, d, 2, &m), u], d)
    }

    #[test]
    fn known_angles_float64() {
        let (tasks, d) = known_pairs(&mut Rng::new(2));
        let refs: Vec<&[f64]> = tasks.iter().map(Vec::as_slice).collect();
        let g = subspace_geometry(&refs, d, 2).unwrap();
        assert_close(pair(&g, 0, 1), &[0.3, 1.1], 1e-13);
        assert_close(pair(&g, 1, 0), &[0.3, 1.1], 1e-13);
        assert_close(pair(&g, 0, 2), &[0.0, 1e-7], 1e-15);
        assert_close(pair(&g, 1, 1), &[0.0, 0.0], 0.0);
        assert_eq!(g.ranks, vec![2, 2, 2]);
    }

    #[test]
    fn known_angles_float32() {
        let (tasks, d) = known_pairs(&mut Rng::new(3));
        let tasks32: Vec<Vec<f32>> = tasks.iter().map(|t| to_f32(t)).collect();
        let refs: Vec<&[f32]> = tasks32.iter().map(Vec::as_slice).collect();
        let g = subspace_geometry(&refs, d, 2).unwrap();
        assert_close(pair(&g, 0, 1), &[0.3, 1.1], 1e-5);
        // The tiny angle (below f32 resolution of the data) goes to the QR path.
        assert!(g.qr_pairs[2] && !g.qr_pairs[1]);
        assert_close(pair(&g, 0, 2), &[0.0, 0.0], 1e-6);
    }

    #[test]
    fn gram_path_agrees_with_qr_path() {
        let mut rng = Rng::new(4);
        let (d, k) = (3000, 6);
        let base = rng.matrix(d, k);
        // Related tasks: a shared component plus task-specific noise.
        let tasks: Vec<Vec<f64>> = (0..4)
            .map(|_| base.iter().map(|b| b + 1.5 * rng.normal()).collect())
            .collect();
        let tasks32: Vec<Vec<f32>> = tasks.iter().map(|t| to_f32(t)).collect();
        let f32_refs: Vec<&[f32]> = tasks32.iter().map(Vec::as_slice).collect();
        // Reference: the QR path on exactly the float32 values.
        let exact: Vec<Vec<f64>> = tasks32
            .iter()
            .map(|t| t.iter().map(|&x| x as f64).collect())
            .collect();
        let exact_refs: Vec<&[f64]> = exact.iter().map(Vec::as_slice).collect();
        let want = subspace_geometry(&exact_refs, d, k).unwrap();
        let got = subspace_geometry(&f32_refs, d, k).unwrap();
        assert!(
            got.qr_pairs.iter().all(|&q| !q),
            "expected the Gram path throughout"
        );
        assert_close(&got.angles, &want.angles, 1e-5);
        assert_close(&got.mean_cosine, &want.mean_cosine, 1e-6);
    }

    #[test]
    fn ill_conditioned_samples_use_qr_path() {
        let mut rng = Rng::new(5);
        let (d, k) = (500, 4);
        let mut cols: Vec<Vec<f64>> = (0..k)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect();
        // Nearly dependent columns and norms spanning 1e-6 .. 1e3.
        cols[1] = cols[0]
            .iter()
            .zip(&cols[1])
            .map(|(a, b)| a + 1e-3 * b)
            .collect();
        for (j, scale) in [1e-6, 1.0, 1e3, 1e-2].iter().enumerate() {
            cols[j].iter_mut().for_each(|x| *x *= scale);
        }
        let s = from_columns(&cols);
        let t = rng.matrix(d, k);
        let t = t
            .iter()
            .zip(&s)
            .map(|(a, b)| 0.3 * a + b * 1e2)
            .collect::<Vec<_>>();
        let exact: Vec<Vec<f64>> = [&s, &t]
            .iter()
            .map(|x| to_f32(x).iter().map(|&v| v as f64).collect())
            .collect();
        let exact_refs: Vec<&[f64]> = exact.iter().map(Vec::as_slice).collect();
        let want = subspace_geometry(&exact_refs, d, k).unwrap();
        let f32s: Vec<Vec<f32>> = [&s, &t].iter().map(|x| to_f32(x)).collect();
        let refs: Vec<&[f32]> = f32s.iter().map(Vec::as_slice).collect();
        let got = subspace_geometry(&refs, d, k).unwrap();
        assert!(got.qr_pairs[1]);
        assert_close(&got.angles, &want.angles, 1e-6);
    }

    #[test]
    fn rank_deficiency_conventions() {
        let mut rng = Rng::new(6);
        let d = 30;
        let a: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let b: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let c: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let twice: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
        let zero = vec![0.0; d];
        let s = from_columns(&[a.clone(), twice, zero.clone()]);
        let t = from_columns(&[a.clone(), b, c]);
        let z = from_columns(&[zero.clone(), zero.clone(), zero]);
        let half = std::f64::consts::FRAC_PI_2;
        let check = |g: &Geometry| {
            assert_eq!(g.ranks, vec![1, 3, 0]);
            assert_close(pair(g, 0, 1), &[0.0, half, half], 1e-6);
            assert_close(pair(g, 0, 0), &[0.0, half, half], 0.0);
            assert_close(pair(g, 2, 2), &[half; 3], 0.0);
            assert_close(pair(g, 1, 2), &[half; 3], 0.0);
            assert!(g.angles.iter().all(|x| x.is_finite()));
            // Task 2's mean gradient is zero: cosine 0, including with itself.
            assert_eq!(g.mean_cosine[2 * 3 + 2], 0.0);
            assert_eq!(g.mean_cosine[2 * 3 + 1], 0.0);
            assert_eq!(g.mean_cosine[0], 1.0);
        };
        let refs: Vec<&[f64]> = vec![&s, &t, &z];
        check(&subspace_geometry(&refs, d, 3).unwrap());
        let f32s: Vec<Vec<f32>> = [&s, &t, &z].iter().map(|x| to_f32(x)).collect();
        let refs32: Vec<&[f32]> = f32s.iter().map(Vec::as_slice).collect();
        check(&subspace_geometry(&refs32, d, 3).unwrap());
    }

    #[test]
    fn mean_cosine_values() {
        let d = 4;
        // Task 0 mean (1, 0, 0, 0); task 1 mean (1, 1, 0, 0) / 2; task 2 mean 0.
        let t0 = from_columns(&[vec![2.0, 1.0, 0.0, 0.0], vec![0.0, -1.0, 0.0, 0.0]]);
        let t1 = from_columns(&[vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]]);
        let t2 = from_columns(&[vec![0.0, 3.0, 1.0, 0.0], vec![0.0, -3.0, -1.0, 0.0]]);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let want = [1.0, s, 0.0, s, 1.0, 0.0, 0.0, 0.0, 0.0];
        let refs: Vec<&[f64]> = vec![&t0, &t1, &t2];
        assert_close(
            &subspace_geometry(&refs, d, 2).unwrap().mean_cosine,
            &want,
            1e-15,
        );
        let f32s: Vec<Vec<f32>> = [&t0, &t1, &t2].iter().map(|x| to_f32(x)).collect();
        let refs32: Vec<&[f32]> = f32s.iter().map(Vec::as_slice).collect();
        assert_close(
            &subspace_geometry(&refs32, d, 2).unwrap().mean_cosine,
            &want,
            1e-7,
        );
    }

    #[test]
    fn column_major_input_gives_the_same_geometry() {
        let mut rng = Rng::new(5);
        let (d, k) = (400, 4);
        let rows: Vec<Vec<f64>> = (0..3).map(|_| rng.matrix(d, k)).collect();
        let cols: Vec<Vec<f64>> = rows
            .iter()
            .map(|b| (0..d * k).map(|p| b[(p % d) * k + p / d]).collect())
            .collect();
        let r64: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let c64: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        let a = subspace_geometry_in(&r64, d, k, Layout::RowMajor).unwrap();
        let b = subspace_geometry_in(&c64, d, k, Layout::ColMajor).unwrap();
        assert_close(&a.angles, &b.angles, 1e-12);
        assert_close(&a.mean_cosine, &b.mean_cosine, 1e-12);
        let r32: Vec<Vec<f32>> = rows.iter().map(|v| to_f32(v)).collect();
        let c32: Vec<Vec<f32>> = cols.iter().map(|v| to_f32(v)).collect();
        let r32: Vec<&[f32]> = r32.iter().map(Vec::as_slice).collect();
        let c32: Vec<&[f32]> = c32.iter().map(Vec::as_slice).collect();
        let a = subspace_geometry_in(&r32, d, k, Layout::RowMajor).unwrap();
        let b = subspace_geometry_in(&c32, d, k, Layout::ColMajor).unwrap();
        assert_close(&a.angles, &b.angles, 1e-5);
        assert_close(&a.mean_cosine, &b.mean_cosine, 1e-5);
    }

    #[test]
    fn non_finite_input_names_the_task() {
        let mut rng = Rng::new(7);
        let good = to_f32(&rng.matrix(20, 3));
        let mut bad = good.clone();
        bad[17] = f32::INFINITY;
        let err = subspace_geometry(&[&good, &bad], 20, 3).unwrap_err();
        assert_eq!(
            err,
            GeometryError::NonFinite {
                what: "gradient samples of task 1".into()
            }
        );
        let bad64: Vec<f64> = bad
            .iter()
            .map(|&x| if x.is_finite() { x as f64 } else { f64::NAN })
            .collect();
        let good64: Vec<f64> = good.iter().map(|&x| x as f64).collect();
        let err = subspace_geometry(&[&bad64, &good64], 20, 3).unwrap_err();
        assert_eq!(
            err,
            GeometryError::NonFinite {
                what: "gradient samples of task 0".into()
            }
        );
    }

    #[test]
    #[should_panic(expected = "block 1 holds 11 values")]
    fn shapes_are_a_precondition() {
        // The binding checks shapes; a kernel caller passing wrong sizes has a bug.
        let x = [1.0f32; 12];
        let _ = subspace_geometry(&[&x[..], &x[..11]], 4, 3);
    }
}
