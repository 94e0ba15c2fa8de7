//! Thin pyo3 layer: validate the arrays it receives, borrow the numpy buffers
//! (zero-copy when C-contiguous, or Fortran-ordered gradient samples; one copy
//! otherwise), release the GIL, run a kernel with panics caught, and hand back
//! numpy arrays. No numerics here.
//!
//! Validation happens once, here: array type, dtype, dimensions, shapes and
//! output buffers. NaN/inf and the PCGrad visiting orders are the kernels' (they
//! find NaN/inf in their first pass over the data). Every error is a
//! [`GeometryError`] until it crosses into Python through the one conversion
//! below.

use crate::error::{catch_panic, GeometryError, Result};
use crate::gram::Layout;
use crate::simd::{detect, Isa, Vectors};
use crate::{angles, project};
use numpy::{
    dtype, BorrowError, Element, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayDyn,
    PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;

pyo3::import_exception!(matmtl.errors, GeometryInputError);

/// The one place where core errors become Python exceptions.
impl From<GeometryError> for PyErr {
    fn from(err: GeometryError) -> PyErr {
        let msg = err.to_string();
        match err {
            GeometryError::WrongType(_) => PyTypeError::new_err(msg),
            GeometryError::Invalid(_) | GeometryError::NonFinite { .. } => {
                GeometryInputError::new_err(msg)
            }
            GeometryError::NoConvergence | GeometryError::Panic(_) => PyRuntimeError::new_err(msg),
        }
    }
}

fn invalid(msg: String) -> GeometryError {
    GeometryError::Invalid(msg)
}

/// A shape as Python prints it: `(5000,)`, `(3, 5000)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

/// The float type of a numpy array; `what` names it in the error.
fn dtype_of(obj: &Bound<'_, PyAny>, what: &str) -> Result<Dtype> {
    let py = obj.py();
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| GeometryError::WrongType(format!("{what} must be a numpy array")))?;
    let dt = arr.dtype();
    if dt.is_equiv_to(&dtype::<f32>(py)) {
        Ok(Dtype::F32)
    } else if dt.is_equiv_to(&dtype::<f64>(py)) {
        Ok(Dtype::F64)
    } else {
        Err(GeometryError::WrongType(format!(
            "{what} has dtype {dt}; expected float32 or float64"
        )))
    }
}

/// One float type for all inputs; `name(i)` names input i, `all` names them
/// together in the mixed-dtype error.
fn common_dtype(
    objs: &[&Bound<'_, PyAny>],
    name: &dyn Fn(usize) -> String,
    all: &str,
) -> Result<Dtype> {
    let dtypes = objs
        .iter()
        .enumerate()
        .map(|(i, obj)| dtype_of(obj, &name(i)))
        .collect::<Result<Vec<_>>>()?;
    match dtypes.first() {
        None => Err(invalid("need at least one task".into())),
        Some(&first) if dtypes.iter().all(|&dt| dt == first) => Ok(first),
        Some(_) => Err(GeometryError::WrongType(format!(
            "{all} mix float32 and float64; convert them to one dtype"
        ))),
    }
}

/// A float array seen as a flat slice in the storage order asked for.
enum Flat<'py, E: Element> {
    /// Contiguous in that order: read in place.
    View(PyReadonlyArrayDyn<'py, E>),
    /// Any other layout: copied once.
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

/// Borrow `obj` (already known to hold `E`), which must have `ndim` dimensions
/// and none of size zero, as a flat slice in `layout` order, with its shape.
fn flat_in<'py, E: Element + Copy>(
    obj: &Bound<'py, PyAny>,
    ndim: usize,
    what: &str,
    layout: Layout,
) -> Result<(Flat<'py, E>, Vec<usize>)> {
    let arr = obj
        .cast::<PyArrayDyn<E>>()
        .map_err(|_| GeometryError::WrongType(format!("{what} has the wrong dtype")))?;
    let shape = arr.shape().to_vec();
    if arr.ndim() != ndim {
        return Err(invalid(format!(
            "{what} must be {ndim}-D, got shape {}",
            py_shape(&shape)
        )));
    }
    if shape.contains(&0) {
        return Err(invalid(format!(
            "{what} is empty (shape {})",
            py_shape(&shape)
        )));
    }
    let view = arr
        .try_readonly()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    let in_place = match layout {
        Layout::RowMajor => arr.is_c_contiguous(),
        Layout::ColMajor => arr.is_fortran_contiguous(),
    };
    // `as_slice` accepts either order and gives the storage order.
    let flat = if in_place && view.as_slice().is_ok() {
        Flat::View(view)
    } else if layout == Layout::RowMajor {
        Flat::Copy(view.as_array().iter().copied().collect())
    } else {
        Flat::Copy(view.as_array().t().iter().copied().collect())
    };
    Ok((flat, shape))
}

/// [`flat_in`] in row-major order.
fn flat<'py, E: Element + Copy>(
    obj: &Bound<'py, PyAny>,
    ndim: usize,
    what: &str,
) -> Result<(Flat<'py, E>, Vec<usize>)> {
    flat_in(obj, ndim, what, Layout::RowMajor)
}

/// Borrow T arrays of one shape (`ndim` dimensions) in `layout` order.
fn borrow_all_in<'py, E: Element + Copy>(
    objs: &[Bound<'py, PyAny>],
    ndim: usize,
    noun: &str,
    layout: Layout,
) -> Result<(Vec<Flat<'py, E>>, Vec<usize>)> {
    let mut flats = Vec::with_capacity(objs.len());
    let mut shape0: Option<Vec<usize>> = None;
    for (t, obj) in objs.iter().enumerate() {
        let (f, shape) = flat_in::<E>(obj, ndim, &format!("{noun} of task {t}"), layout)?;
        if let Some(s0) = shape0.as_ref().filter(|s0| **s0 != shape) {
            let dim = if s0[0] != shape[0] { "d" } else { "k" };
            return Err(invalid(format!(
                "{noun} of task {t} has shape {} but task 0 has {}: mismatched {dim}; all tasks need the same shape",
                py_shape(&shape),
                py_shape(s0)
            )));
        }
        shape0.get_or_insert(shape);
        flats.push(f);
    }
    let shape = shape0.ok_or_else(|| invalid("need at least one task".into()))?;
    Ok((flats, shape))
}

/// Run a kernel without the GIL, panics caught.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    py.detach(|| catch_panic(f))
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
    match common_dtype(&refs, &|t| format!("gradient samples of task {t}"), "tasks")? {
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
    let layout = if fortran {
        Layout::ColMajor
    } else {
        Layout::RowMajor
    };
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
/// the grads' dtype, not overlapping them) -- a training loop that reuses them
/// skips allocating and page-faulting fresh output memory on every step.
#[pyfunction]
#[pyo3(signature = (grads, orders, return_projected = true, out = None))]
fn pcgrad<'py>(
    py: Python<'py>,
    grads: Vec<Bound<'py, PyAny>>,
    orders: Vec<Vec<usize>>,
    return_projected: bool,
    out: OutArg<'py>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let refs: Vec<&Bound<'py, PyAny>> = grads.iter().collect();
    match common_dtype(&refs, &|t| format!("gradient of task {t}"), "tasks")? {
        Dtype::F32 => pcgrad_impl::<f32>(py, &grads, &orders, return_projected, out),
        Dtype::F64 => pcgrad_impl::<f64>(py, &grads, &orders, return_projected, out),
    }
}

/// A caller's output array: the gradients' dtype, the right shape, C order.
/// (Writeable and not overlapping the inputs is checked when it is borrowed.)
fn output_array<'py, E: Element>(
    obj: &Bound<'py, PyAny>,
    shape: &[usize],
    what: &str,
) -> Result<Bound<'py, PyArrayDyn<E>>> {
    let want = dtype::<E>(obj.py());
    let arr = obj.cast::<PyArrayDyn<E>>().map_err(|_| {
        GeometryError::WrongType(match obj.cast::<PyUntypedArray>() {
            Ok(a) => format!("{what} has dtype {}; the gradients are {want}", a.dtype()),
            Err(_) => format!("{what} must be a numpy array with the gradients' dtype ({want})"),
        })
    })?;
    if arr.shape() != shape {
        return Err(invalid(format!(
            "{what} has shape {}, expected {}",
            py_shape(arr.shape()),
            py_shape(shape)
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(invalid(format!("{what} must be C-contiguous")));
    }
    Ok(arr.clone())
}

/// Borrow an output array for writing; refused when read-only or overlapping
/// an array already borrowed (the inputs, or the other output).
fn writeable<'py, E: Element>(
    arr: &Bound<'py, PyArrayDyn<E>>,
    what: &str,
) -> Result<PyReadwriteArrayDyn<'py, E>> {
    arr.try_readwrite().map_err(|e| match e {
        BorrowError::NotWriteable => invalid(format!("{what} is read-only")),
        _ => invalid(format!(
            "{what} overlaps the input gradients or the other output array; the projection would read what it overwrites"
        )),
    })
}

/// PCGrad's `out` argument: `(projected or None, total)`.
type OutArg<'py> = Option<(Option<Bound<'py, PyAny>>, Bound<'py, PyAny>)>;
/// PCGrad's output arrays: projected (if wanted) and total.
type Outputs<'py, E> = (Option<Bound<'py, PyArrayDyn<E>>>, Bound<'py, PyArrayDyn<E>>);

/// The caller's `out` buffers, or fresh ones.
fn pcgrad_outputs<'py, E: Element>(
    py: Python<'py>,
    out: OutArg<'py>,
    return_projected: bool,
    n: usize,
    d: usize,
) -> Result<Outputs<'py, E>> {
    let Some((projected, total)) = out else {
        return Ok((
            return_projected.then(|| PyArray2::<E>::zeros(py, [n, d], false).to_dyn().clone()),
            PyArray1::<E>::zeros(py, [d], false).to_dyn().clone(),
        ));
    };
    let projected = match (projected, return_projected) {
        (Some(p), true) => Some(output_array::<E>(&p, &[n, d], "out projected")?),
        (None, false) => None,
        _ => {
            return Err(invalid(
                "out: give a projected array exactly when return_projected is True".into(),
            ))
        }
    };
    Ok((projected, output_array::<E>(&total, &[d], "out total")?))
}

fn pcgrad_impl<'py, E: Vectors + Element>(
    py: Python<'py>,
    grads: &[Bound<'py, PyAny>],
    orders: &[Vec<usize>],
    return_projected: bool,
    out: OutArg<'py>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (flats, shape) = borrow_all_in::<E>(grads, 1, "gradient", Layout::RowMajor)?;
    let (n, d) = (grads.len(), shape[0]);
    let slices: Vec<&[E]> = flats.iter().map(Flat::as_slice).collect();
    let (projected, total) = pcgrad_outputs::<E>(py, out, return_projected, n, d)?;
    {
        let mut p = projected
            .as_ref()
            .map(|p| writeable(p, "out projected"))
            .transpose()?;
        let mut s = writeable(&total, "out total")?;
        let p = p.as_mut().map(|p| p.as_slice_mut().expect("C-contiguous"));
        let s = s.as_slice_mut().expect("C-contiguous");
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
    match common_dtype(&[&g, &basis], &|i| ["g", "G"][i].to_string(), "g and G")? {
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
    if gshape[0] != bshape[0] {
        return Err(invalid(format!(
            "g has shape {} but G has shape {}; need g (d,), G (d, k)",
            py_shape(&gshape),
            py_shape(&bshape)
        ))
        .into());
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
    match common_dtype(&[&g1, &g2], &|i| ["g1", "g2"][i].to_string(), "g1 and g2")? {
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
    if s1 != s2 {
        return Err(invalid(format!(
            "g1 {} and g2 {} must have the same shape",
            py_shape(&s1),
            py_shape(&s2)
        ))
        .into());
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
