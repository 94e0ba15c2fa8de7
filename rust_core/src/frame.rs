//! Orthonormal bases ("frames") of a task's gradient span, computed the accurate
//! way: in f64, columns scaled to unit length, Householder QR, then an SVD of the
//! small R factor to find the numerical rank. Used for float64 input, for the
//! pairs the Gram path cannot resolve accurately, and for span projections.

use crate::error::{GeometryError, Result};
use crate::gram::Layout;
use crate::simd::Real;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

/// Rows per rayon task when converting row-major input to column-major f64.
const CONVERT_ROWS: usize = 1 << 14;

/// Singular values of the column-equilibrated samples below `tol * s_max` count
/// as zero. `tol = 10 k eps` of the *input* type: differences at the level of the
/// input's own rounding (e.g. a float32 sample that is 3x another) are not
/// separate directions.
pub fn rank_tolerance<E: Real>(k: usize) -> f64 {
    20.0 * k as f64 * E::UNIT_ROUNDOFF
}

/// A `d x rank` matrix with orthonormal columns spanning the samples.
pub struct Frame {
    pub q: Mat<f64>,
}

impl Frame {
    pub fn rank(&self) -> usize {
        self.q.ncols()
    }
}

/// Copy a `d x k` slice in `layout` into a column-major f64 matrix (in parallel).
pub fn to_columns<E: Real>(g: &[E], d: usize, k: usize, layout: Layout) -> Mat<f64> {
    let mut a = Mat::<f64>::zeros(d, k);
    if layout == Layout::ColMajor {
        for (j, sample) in g.chunks_exact(d).enumerate() {
            let dst = a
                .as_mut()
                .col_mut(j)
                .try_as_col_major_mut()
                .expect("a Mat column is contiguous")
                .as_slice_mut();
            dst.par_chunks_mut(CONVERT_ROWS)
                .zip(sample.par_chunks(CONVERT_ROWS))
                .for_each(|(dst, src)| dst.iter_mut().zip(src).for_each(|(y, &x)| *y = x.to_f64()));
        }
        return a;
    }
    a.as_mut()
        .par_row_chunks_mut(CONVERT_ROWS)
        .zip(g.par_chunks(CONVERT_ROWS * k))
        .for_each(|(mut dst, src)| {
            for (i, row) in src.chunks_exact(k).enumerate() {
                for (j, &x) in row.iter().enumerate() {
                    dst[(i, j)] = x.to_f64();
                }
            }
        });
    a
}

/// Orthonormal frame of the columns of `a` (consumed: it is scaled in place).
/// Zero columns are ignored; `what` names the input in the NaN/inf error.
pub fn frame_of(mut a: Mat<f64>, rank_tol: f64, what: &dyn Fn() -> String) -> Result<Frame> {
    let d = a.nrows();
    // Scale columns to unit norm: principal angles do not depend on column
    // scaling, and equilibrated columns make the rank tolerance scale-free
    // (sample norms spanning many decades are common in gradients).
    let mut kept = Vec::with_capacity(a.ncols());
    for j in 0..a.ncols() {
        let norm = a.col(j).norm_l2();
        if !norm.is_finite() {
            return Err(GeometryError::NonFinite { what: what() });
        }
        if norm > 0.0 {
            a.col_mut(j).iter_mut().for_each(|x| *x /= norm);
            kept.push(j);
        }
    }
    if kept.is_empty() {
        return Ok(Frame {
            q: Mat::zeros(d, 0),
        });
    }
    let a = Mat::from_fn(d, kept.len(), |i, j| a[(i, kept[j])]);
    let qr = a.qr();
    let svd = qr.thin_R().svd()?;
    let s = svd.S().column_vector();
    let rank = (0..s.nrows()).filter(|&i| s[i] > rank_tol * s[0]).count();
    // span(A) = span(Q U[:, :rank]) with A = Q R = Q U S V^T.
    let q = qr.compute_thin_Q();
    let mut basis = Mat::<f64>::zeros(d, rank);
    matmul(
        basis.as_mut(),
        Accum::Replace,
        q.as_ref(),
        svd.U().get(.., ..rank),
        1.0,
        Par::rayon(0),
    );
    Ok(Frame { q: basis })
}

/// Principal angles between the spans of two frames, ascending, padded with
/// pi/2 up to `k` (directions one of the spans lacks).
///
/// Cosines come from the SVD of `Qs^T Qt`, sines from the SVD of the part of the
/// smaller frame orthogonal to the larger one; each angle is taken from
/// whichever is better conditioned (arcsin below pi/4, arccos above), as in
/// scipy.linalg.subspace_angles.
pub fn frame_angles(s: &Frame, t: &Frame, k: usize) -> Result<Vec<f64>> {
    let (small, large) = if t.rank() <= s.rank() { (t, s) } else { (s, t) };
    let m = small.rank();
    let mut angles = vec![std::f64::consts::FRAC_PI_2; k];
    if m == 0 {
        return Ok(angles);
    }
    let mut proj = Mat::<f64>::zeros(large.rank(), m);
    matmul(
        proj.as_mut(),
        Accum::Replace,
        large.q.transpose(),
        small.q.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let cos = proj.singular_values()?;
    let mut resid = small.q.clone();
    matmul(
        resid.as_mut(),
        Accum::Add,
        large.q.as_ref(),
        proj.as_ref(),
        -1.0,
        Par::rayon(0),
    );
    let mut sin = resid.qr().thin_R().singular_values()?;
    sin.reverse();
    for i in 0..m {
        angles[i] = angle_from(sin[i], cos[i]);
    }
    Ok(angles)
}

/// One principal angle from its sine and cosine (each computed independently).
#[inline]
pub fn angle_from(sin: f64, cos: f64) -> f64 {
    if sin * sin < 0.5 {
        sin.min(1.0).asin()
    } else {
        cos.min(1.0).acos()
    }
}

/// Orthogonal projection `Q (Q^T g)` of the columns of `g` onto the frame's span.
pub fn project(frame: &Frame, g: MatRef<'_, f64>) -> Mat<f64> {
    let mut coef = Mat::<f64>::zeros(frame.rank(), 1);
    matmul(
        coef.as_mut(),
        Accum::Replace,
        frame.q.transpose(),
        g,
        1.0,
        Par::rayon(0),
    );
    let mut par = Mat::<f64>::zeros(g.nrows(), 1);
    matmul(
        par.as_mut(),
        Accum::Replace,
        frame.q.as_ref(),
        coef.as_ref(),
        1.0,
        Par::rayon(0),
    );
    par
}
