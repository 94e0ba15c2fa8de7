//! Helpers shared by the unit tests.

/// Small deterministic generator (SplitMix64) so the tests need no crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Approximately standard normal (sum of uniforms; fine for tests).
    pub fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.uniform()).sum::<f64>() / 2.0_f64.sqrt()
    }

    pub fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f64> {
        (0..rows * cols).map(|_| self.normal()).collect()
    }
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Naive f64 Gram of the concatenated row-major blocks.
pub fn naive_gram<E: crate::simd::Real>(blocks: &[&[E]], d: usize, k: usize) -> Vec<f64> {
    let n = blocks.len() * k;
    let col = |c: usize, i: usize| blocks[c / k][i * k + c % k].to_f64();
    let mut g = vec![0.0; n * n];
    for a in 0..n {
        for b in 0..n {
            g[a * n + b] = (0..d).map(|i| col(a, i) * col(b, i)).sum();
        }
    }
    g
}
