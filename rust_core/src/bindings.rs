//! Thin pyo3 layer: check inputs, borrow the numpy buffers (zero-copy when
//! C-contiguous, or Fortran-ordered gradient samples; one copy otherwise), release the GIL, run a kernel with panics
//! caught, and hand back numpy arrays. No numerics here.

use crate::error::GeometryError;
use crate::gram::Layout;
use crate::simd::{detect, Isa, Vectors};
use crate::{angles, project};
use numpy::{
    dtype, Element, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

/// The float type of a numpy array, or a TypeError naming `what`.
fn dtype_of(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Dtype> {
    let py = obj.py();
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a numpy array")))?;
    let dt = arr.dtype();
    if dt.is_equiv_to(&dtype::<f32>(py)) {
        Ok(Dtype::F32)
    } else if dt.is_equiv_to(&dtype::<f64>(py)) {
        Ok(Dtype::F64)
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} has dtype {dt}; expected float32 or float64"
        )))
    }
}

/// One common float type for all inputs (mixing float32 and float64 is refused).
fn common_dtype(objs: &[&Bound<'_, PyAny>], names: &dyn Fn(usize) -> String) -> PyResult<Dtype> {
    let mut first = None;
    for (i, obj) in objs.iter().enumerate() {
        let dt = dtype_of(obj, &names(i))?;
        match first {
            None => first = Some(dt),
            Some(f) if f != dt => {
                return Err(PyTypeError::new_err(
                    "inputs mix float32 and float64; convert them to one dtype",
                ))
            }
            _ => {}
        }
    }
    first.ok_or_else(|| PyValueError::new_err("no inputs given"))
}

/// A float array seen as a flat row-major slice.
enum Flat<'py, E: Element> {
    /// C-contiguous input: read in place.
    View(PyReadonlyArrayDyn<'py, E>),
    /// Any other layout: copied once into row-major order.
    Copy(Vec<E>),
}

impl<E: Element> Flat<'_, E> {
    fn as_slice(&self) -> &[E] {
        match self {
            // `flat_in` only builds views of arrays contiguous in its layout.
            Flat::View(v) => v.as_slice().expect("contiguous"),
            Flat::Copy(v) => v,
        }
    }
}

/// Borrow `obj` (already known to hold `E`) with the given number of dimensions,
/// as a row-major slice.
fn flat<'py, E: Element + Copy>(
    obj: &Bound<'py, PyAny>,
    ndim: usize,
    what: &str,
) -> PyResult<(Flat<'py, E>, Vec<usize>)> {
    flat_in(obj, ndim, what, Layout::RowMajor)
}

/// [`flat`] in the given storage order: Fortran-ordered arrays are read in place
/// when `layout` is column-major.
fn flat_in<'py, E: Element + Copy>(
    obj: &Bound<'py, PyAny>,
    ndim: usize,
    what: &str,
    layout: Layout,
) -> PyResult<(Flat<'py, E>, Vec<usize>)> {
    let arr = obj
        .cast::<PyArrayDyn<E>>()
        .map_err(|_| PyTypeError::new_err(format!("{what} has the wrong dtype")))?;
    if arr.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{what} must be {ndim}-D, got shape {:?}",
            arr.shape()
        )));
    }
    let shape = arr.shape().to_vec();
    let view = arr
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    // `as_slice` accepts either order and gives the storage order.
    let in_place = match layout {
        Layout::RowMajor => arr.is_c_contiguous(),
        Layout::ColMajor => arr.is_fortran_contiguous(),
    };
    let flat = if in_place && view.as_slice().is_ok() {
        Flat::View(view)
    } else if layout == Layout::RowMajor {
        Flat::Copy(view.as_array().iter().copied().collect())
    } else {
        Flat::Copy(view.as_array().t().iter().copied().collect())
    };
    Ok((flat, shape))
}

/// Run a kernel without the GIL; kernel errors and panics become ValueError.
fn run<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, GeometryError> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(PyValueError::new_err(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(PyValueError::new_err(format!(
                "internal error in matmtl._core: {msg}"
            )))
        }
    }
}

/// Borrow T same-shaped 2-D (or 1-D, `ndim`) arrays row-major, checking shapes agree.
fn borrow_all<'py, E: Element + Copy>(
    objs: &[Bound<'py, PyAny>],
    ndim: usize,
    noun: &str,
) -> PyResult<(Vec<Flat<'py, E>>, Vec<usize>)> {
    borrow_all_in(objs, ndim, noun, Layout::RowMajor)
}

/// [`borrow_all`] in the given storage order.
fn borrow_all_in<'py, E: Element + Copy>(
    objs: &[Bound<'py, PyAny>],
    ndim: usize,
    noun: &str,
    layout: Layout,
) -> PyResult<(Vec<Flat<'py, E>>, Vec<usize>)> {
    let mut flats = Vec::with_capacity(objs.len());
    let mut shape0: Option<Vec<usize>> = None;
    for (t, obj) in objs.iter().enumerate() {
        let (f, shape) = flat_in::<E>(obj, ndim, &format!("{noun} of task {t}"), layout)?;
        if shape.contains(&0) {
            return Err(PyValueError::new_err(format!(
                "{noun} of task {t} is empty (shape {shape:?})"
            )));
        }
        match &shape0 {
            Some(s0) if *s0 != shape => {
                return Err(PyValueError::new_err(format!(
                    "{noun} of task {t} has shape {shape:?}, task 0 has {s0:?}; all tasks need the same shape"
                )))
            }
            _ => shape0 = Some(shape),
        }
        flats.push(f);
    }
    let shape = shape0.ok_or_else(|| PyValueError::new_err("need at least one task"))?;
    Ok((flats, shape))
}

type GeometryTuple<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

/// subspace_geometry(tasks) -> (angles (T,T,k), mean_cosine (T,T), ranks (T,), qr_pairs (T,T))
///
/// `tasks`: list of T float32 or float64 arrays of shape (d, k).
#[pyfunction]
fn subspace_geometry<'py>(
    py: Python<'py>,
    tasks: Vec<Bound<'py, PyAny>>,
) -> PyResult<GeometryTuple<'py>> {
    let refs: Vec<&Bound<'py, PyAny>> = tasks.iter().collect();
    match common_dtype(&refs, &|t| format!("gradient samples of task {t}"))? {
        Dtype::F32 => geometry_impl::<f32>(py, &tasks),
        Dtype::F64 => geometry_impl::<f64>(py, &tasks),
    }
}

fn geometry_impl<'py, E: Vectors + Element>(
    py: Python<'py>,
    tasks: &[Bound<'py, PyAny>],
) -> PyResult<GeometryTuple<'py>> {
    // Fortran-ordered (d, k) samples (e.g. the transpose of torch's (k, d)
    // gradient stacks) are read in place as column-major; anything else row-major.
    let fortran = tasks.iter().all(|t| {
        t.cast::<PyArrayDyn<E>>()
            .is_ok_and(|a| a.ndim() == 2 && a.is_fortran_contiguous())
    });
    let layout = if fortran { Layout::ColMajor } else { Layout::RowMajor };
    let (flats, shape) = borrow_all_in::<E>(tasks, 2, "gradient samples", layout)?;
    let (d, k) = (shape[0], shape[1]);
    let slices: Vec<&[E]> = flats.iter().map(Flat::as_slice).collect();
    let g = run(py, || angles::subspace_geometry_in(&slices, d, k, layout))?;
    let n = g.tasks;
    let ranks: Vec<i64> = g.ranks.iter().map(|&r| r as i64).collect();
    Ok((
        PyArray1::from_vec(py, g.angles)
            .reshape([n, n, k])?
            .into_any(),
        PyArray1::from_vec(py, g.mean_cosine)
            .reshape([n, n])?
            .into_any(),
        PyArray1::from_vec(py, ranks).into_any(),
        PyArray1::from_vec(py, g.qr_pairs)
            .reshape([n, n])?
            .into_any(),
    ))
}

/// pcgrad(grads, orders, return_projected=True, out=None) -> (projected (T,d) or None, total (d,))
///
/// `grads`: list of T float arrays of shape (d,); `orders`: T lists, the
/// visiting order of the other tasks for each task. `out`: optional
/// `(projected or None, total)` arrays to write into (C-contiguous, writeable,
/// the grads' dtype) -- a training loop that reuses them skips allocating and
/// page-faulting fresh output memory on every step.
#[pyfunction]
#[pyo3(signature = (grads, orders, return_projected = true, out = None))]
fn pcgrad<'py>(
    py: Python<'py>,
    grads: Vec<Bound<'py, PyAny>>,
    orders: Vec<Vec<usize>>,
    return_projected: bool,
    out: Option<(Option<Bound<'py, PyAny>>, Bound<'py, PyAny>)>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let refs: Vec<&Bound<'py, PyAny>> = grads.iter().collect();
    match common_dtype(&refs, &|t| format!("gradient of task {t}"))? {
        Dtype::F32 => pcgrad_impl::<f32>(py, &grads, &orders, return_projected, out),
        Dtype::F64 => pcgrad_impl::<f64>(py, &grads, &orders, return_projected, out),
    }
}

/// A caller's output array: right dtype, shape and layout, or a clear error.
fn output_array<'py, E: Element>(
    obj: &Bound<'py, PyAny>,
    shape: &[usize],
    what: &str,
) -> PyResult<Bound<'py, PyArrayDyn<E>>> {
    let arr = obj.cast::<PyArrayDyn<E>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a numpy array with the gradients' dtype"))
    })?;
    if arr.shape() != shape {
        return Err(PyValueError::new_err(format!(
            "{what} has shape {:?}, expected {shape:?}",
            arr.shape()
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what} must be C-contiguous")));
    }
    Ok(arr.clone())
}

fn pcgrad_impl<'py, E: Vectors + Element>(
    py: Python<'py>,
    grads: &[Bound<'py, PyAny>],
    orders: &[Vec<usize>],
    return_projected: bool,
    out: Option<(Option<Bound<'py, PyAny>>, Bound<'py, PyAny>)>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (flats, shape) = borrow_all::<E>(grads, 1, "gradient")?;
    let (n, d) = (grads.len(), shape[0]);
    let slices: Vec<&[E]> = flats.iter().map(Flat::as_slice).collect();
    let (projected, total) = match out {
        Some((p, t)) => {
            let p = match (p, return_projected) {
                (Some(p), true) => Some(output_array::<E>(&p, &[n, d], "out projected")?),
                (None, false) => None,
                _ => {
                    return Err(PyValueError::new_err(
                        "out: give a projected array exactly when return_projected is True",
                    ))
                }
            };
            (p, output_array::<E>(&t, &[d], "out total")?)
        }
        None => (
            return_projected.then(|| PyArray2::<E>::zeros(py, [n, d], false).to_dyn().clone()),
            PyArray1::<E>::zeros(py, [d], false).to_dyn().clone(),
        ),
    };
    {
        // try_readwrite refuses read-only arrays and arrays overlapping the borrowed inputs
        let mut p = projected
            .as_ref()
            .map(|p| p.try_readwrite())
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("out projected: {e}")))?;
        let mut s = total
            .try_readwrite()
            .map_err(|e| PyValueError::new_err(format!("out total: {e}")))?;
        let p = p.as_mut().map(|p| p.as_slice_mut()).transpose()?;
        let s = s.as_slice_mut()?;
        run(py, || project::pcgrad(&slices, d, orders, p, s))?;
    }
    Ok((
        projected.map_or_else(|| py.None().into_bound(py), |p| p.into_any()),
        total.into_any(),
    ))
}

/// project_onto_span(g, basis) -> (parallel, orthogonal)
///
/// `g`: shape (d,); `basis`: shape (d, k), same float dtype.
#[pyfunction]
fn project_onto_span<'py>(
    py: Python<'py>,
    g: Bound<'py, PyAny>,
    basis: Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    match common_dtype(&[&g, &basis], &|i| ["g", "G"][i].to_string())? {
        Dtype::F32 => span_impl::<f32>(py, &g, &basis),
        Dtype::F64 => span_impl::<f64>(py, &g, &basis),
    }
}

fn span_impl<'py, E: Vectors + Element>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    basis: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (gf, gshape) = flat::<E>(g, 1, "g")?;
    let (bf, bshape) = flat::<E>(basis, 2, "G")?;
    if gshape[0] != bshape[0] || bshape.contains(&0) {
        return Err(PyValueError::new_err(format!(
            "g has shape {gshape:?} but G has shape {bshape:?}; need g (d,), G (d, k), d, k >= 1"
        )));
    }
    let (d, k) = (bshape[0], bshape[1]);
    let parallel = PyArray1::<E>::zeros(py, [d], false);
    let orthogonal = PyArray1::<E>::zeros(py, [d], false);
    {
        let mut p = parallel.readwrite();
        let mut o = orthogonal.readwrite();
        let (p, o) = (p.as_slice_mut()?, o.as_slice_mut()?);
        let (gs, bs) = (gf.as_slice(), bf.as_slice());
        run(py, || project::project_onto_span(gs, bs, d, k, p, o))?;
    }
    Ok((parallel.into_any(), orthogonal.into_any()))
}

/// project_halfspace(g1, g2) -> g1 - min(0, g1.g2) / |g2|^2 g2
#[pyfunction]
fn project_halfspace<'py>(
    py: Python<'py>,
    g1: Bound<'py, PyAny>,
    g2: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match common_dtype(&[&g1, &g2], &|i| ["g1", "g2"][i].to_string())? {
        Dtype::F32 => halfspace_impl::<f32>(py, &g1, &g2),
        Dtype::F64 => halfspace_impl::<f64>(py, &g1, &g2),
    }
}

fn halfspace_impl<'py, E: Vectors + Element>(
    py: Python<'py>,
    g1: &Bound<'py, PyAny>,
    g2: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (f1, s1) = flat::<E>(g1, 1, "g1")?;
    let (f2, s2) = flat::<E>(g2, 1, "g2")?;
    if s1 != s2 || s1[0] == 0 {
        return Err(PyValueError::new_err(format!(
            "g1 {s1:?} and g2 {s2:?} must have the same non-empty shape"
        )));
    }
    let out = PyArray1::<E>::zeros(py, [s1[0]], false);
    {
        let mut o = out.readwrite();
        let o = o.as_slice_mut()?;
        let (a, b) = (f1.as_slice(), f2.as_slice());
        run(py, || project::project_halfspace(a, b, o))?;
    }
    Ok(out.into_any())
}

/// The SIMD instruction set the kernels use on this CPU.
#[pyfunction]
fn simd_isa() -> &'static str {
    match detect() {
        Isa::Avx512 => "avx512",
        Isa::Avx2Fma => "avx2+fma",
        Isa::Portable => "portable",
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(subspace_geometry, m)?)?;
    m.add_function(wrap_pyfunction!(pcgrad, m)?)?;
    m.add_function(wrap_pyfunction!(project_onto_span, m)?)?;
    m.add_function(wrap_pyfunction!(project_halfspace, m)?)?;
    m.add_function(wrap_pyfunction!(simd_isa, m)?)?;
    Ok(())
}
