//! Deterministic test data generated on the host, so every backend sees the
//! same numbers.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Uniform values in `[lo, hi)` from a fixed-seed LCG.
pub fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    lo: f32,
    hi: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
