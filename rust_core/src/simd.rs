//! A small SIMD vocabulary for the Gram microkernel, with one implementation per
//! instruction set (AVX-512, AVX2+FMA, portable) chosen at run time.
//!
//! The kernels are written once, generic over [`Vector`], and instantiated inside
//! `#[target_feature]` entry points; every method here is `#[inline(always)]`, so
//! once inlined into such an entry point the intrinsics compile to single
//! instructions (checked by measuring, see docs/geometry.md).

/// Element types the kernels read: `f32` and `f64`.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Default
    + std::ops::Mul<Output = Self>
    + std::ops::Add<Output = Self>
    + 'static
{
    /// Unit roundoff of the type (half the machine epsilon).
    const UNIT_ROUNDOFF: f64;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// The most lanes any [`Vector`] has (16 f32 in an AVX-512 register).
pub const MAX_LANES: usize = 16;

/// A register of `LANES` elements of type `E`.
///
/// # Safety
/// Every method may only run on a CPU with the implementation's instruction set
/// (the kernels only use them inside [`vectorized_for`]); pointers must be valid
/// for `LANES` elements.
pub unsafe trait Vector<E: Real>: Copy {
    const LANES: usize;
    /// # Safety
    /// See the trait.
    unsafe fn zero() -> Self;
    /// # Safety
    /// See the trait.
    unsafe fn splat(x: E) -> Self;
    /// Unaligned load of `LANES` elements.
    /// # Safety
    /// See the trait.
    unsafe fn load(p: *const E) -> Self;
    /// Unaligned store of `LANES` elements.
    /// # Safety
    /// See the trait.
    unsafe fn store(self, p: *mut E);
    /// Store that bypasses the caches (for output written once and not read
    /// back soon); call [`store_fence`] before other threads read it.
    /// # Safety
    /// See the trait; `p` must also be aligned to `LANES` elements.
    unsafe fn stream(self, p: *mut E);
    /// `self * b + c`, fused where the instruction set allows.
    /// # Safety
    /// See the trait.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `dst[0..LANES] += self`, widened to f64.
    /// # Safety
    /// See the trait.
    unsafe fn add_to_f64(self, dst: *mut f64);
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx512F32(__m512);
    #[derive(Clone, Copy)]
    pub struct Avx512F64(__m512d);
    #[derive(Clone, Copy)]
    pub struct Avx2F32(__m256);
    #[derive(Clone, Copy)]
    pub struct Avx2F64(__m256d);

    unsafe impl Vector<f32> for Avx512F32 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Self(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32) {
            _mm512_stream_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Self(_mm512_fmadd_ps(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add_to_f64(self, dst: *mut f64) {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(self.0));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(self.0),
            )));
            _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), lo));
            _mm512_storeu_pd(dst.add(8), _mm512_add_pd(_mm512_loadu_pd(dst.add(8)), hi));
        }
    }

    unsafe impl Vector<f64> for Avx512F64 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm512_setzero_pd())
        }
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            Self(_mm512_set1_pd(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Self(_mm512_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm512_storeu_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f64) {
            _mm512_stream_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Self(_mm512_fmadd_pd(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add_to_f64(self, dst: *mut f64) {
            _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), self.0));
        }
    }

    unsafe impl Vector<f32> for Avx2F32 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Self(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32) {
            _mm256_stream_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Self(_mm256_fmadd_ps(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add_to_f64(self, dst: *mut f64) {
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(self.0));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(self.0));
            _mm256_storeu_pd(dst, _mm256_add_pd(_mm256_loadu_pd(dst), lo));
            _mm256_storeu_pd(dst.add(4), _mm256_add_pd(_mm256_loadu_pd(dst.add(4)), hi));
        }
    }

    unsafe impl Vector<f64> for Avx2F64 {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm256_setzero_pd())
        }
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            Self(_mm256_set1_pd(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Self(_mm256_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm256_storeu_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f64) {
            _mm256_stream_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Self(_mm256_fmadd_pd(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add_to_f64(self, dst: *mut f64) {
            _mm256_storeu_pd(dst, _mm256_add_pd(_mm256_loadu_pd(dst), self.0));
        }
    }
}

/// Plain-array fallback for CPUs without AVX2 (and non-x86 targets); the
/// compiler vectorises it with whatever the baseline target offers.
#[derive(Clone, Copy)]
pub struct Portable<E, const N: usize>([E; N]);

unsafe impl<E: Real, const N: usize> Vector<E> for Portable<E, N> {
    const LANES: usize = N;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self([E::default(); N])
    }
    #[inline(always)]
    unsafe fn splat(x: E) -> Self {
        Self([x; N])
    }
    #[inline(always)]
    unsafe fn load(p: *const E) -> Self {
        Self(std::ptr::read_unaligned(p as *const [E; N]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut E) {
        std::ptr::write_unaligned(p as *mut [E; N], self.0)
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut E) {
        self.store(p)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // Separate multiply and add: `mul_add` is a slow library call without FMA.
        let mut out = c.0;
        for ((o, x), y) in out.iter_mut().zip(self.0).zip(b.0) {
            *o = x * y + *o;
        }
        Self(out)
    }
    #[inline(always)]
    unsafe fn add_to_f64(self, dst: *mut f64) {
        for (i, x) in self.0.into_iter().enumerate() {
            *dst.add(i) += x.to_f64();
        }
    }
}

/// Hint the CPU to bring the cache line holding `p` into L1. Never faults, so
/// `p` may point anywhere (it is not dereferenced).
#[inline(always)]
pub fn prefetch<E>(p: *const E) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Order earlier [`Vector::stream`] stores before later stores, so that the
/// data is visible to the thread that continues after a parallel section.
#[inline(always)]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// The vector types used for element type `E` on each instruction set.
pub trait Vectors: Real {
    type Avx512: Vector<Self>;
    type Avx2: Vector<Self>;
    type Portable: Vector<Self>;
}

#[cfg(target_arch = "x86_64")]
impl Vectors for f32 {
    type Avx512 = x86::Avx512F32;
    type Avx2 = x86::Avx2F32;
    type Portable = Portable<f32, 8>;
}

#[cfg(target_arch = "x86_64")]
impl Vectors for f64 {
    type Avx512 = x86::Avx512F64;
    type Avx2 = x86::Avx2F64;
    type Portable = Portable<f64, 4>;
}

// Elsewhere only the portable kernels ever run (`detect` never reports x86 sets).
#[cfg(not(target_arch = "x86_64"))]
impl Vectors for f32 {
    type Avx512 = Portable<f32, 8>;
    type Avx2 = Portable<f32, 8>;
    type Portable = Portable<f32, 8>;
}

#[cfg(not(target_arch = "x86_64"))]
impl Vectors for f64 {
    type Avx512 = Portable<f64, 4>;
    type Avx2 = Portable<f64, 4>;
    type Portable = Portable<f64, 4>;
}

/// Instruction sets the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

/// The best instruction set this CPU supports (checked once per call; cheap).
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// A piece of work to compile for the best instruction set. `run` is
/// `#[inline(always)]` in every implementation, so it is inlined into one of the
/// `#[target_feature]` functions below before LLVM generates code: explicit
/// `Vector` operations become single instructions and plain loops are
/// auto-vectorised for that set. (A closure cannot be forced inline, and one left
/// out of line is compiled for the baseline target only.)
pub trait Kernel<E: Real> {
    type Output;
    /// # Safety
    /// The instruction set of `V` must be available on this CPU.
    unsafe fn run<V: Vector<E>>(self) -> Self::Output;
}

/// Run `kernel` compiled for the best instruction set of this CPU. Call it
/// inside each parallel task: code run by rayon workers is compiled separately.
#[inline(always)]
pub fn vectorized<E: Vectors, K: Kernel<E>>(kernel: K) -> K::Output {
    vectorized_for(detect(), kernel)
}

/// [`vectorized`] for a given instruction set, which the CPU must support.
#[inline(always)]
pub fn vectorized_for<E: Vectors, K: Kernel<E>>(isa: Isa, kernel: K) -> K::Output {
    // SAFETY: callers pass `detect()` or a set it implies.
    unsafe {
        match isa {
            Isa::Avx512 => with_avx512::<E, E::Avx512, K>(kernel),
            Isa::Avx2Fma => with_avx2::<E, E::Avx2, K>(kernel),
            Isa::Portable => kernel.run::<E::Portable>(),
        }
    }
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn with_avx512<E: Real, V: Vector<E>, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<V>()
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn with_avx2<E: Real, V: Vector<E>, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<V>()
}
