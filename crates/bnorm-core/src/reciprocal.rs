//! `1 / x`, exactly.
//!
//! burn's `Tensor::recip` is not used anywhere in this workspace. With
//! burn-ndarray's `simd` feature (on in burn's default features) it runs the
//! CPU's approximate-reciprocal instruction (`rcp14`, 14 bits, on AVX-512;
//! `rcp`, about 12 bits, on AVX2: a relative error up to ~4e-4, more than
//! the reference fixtures' tolerance) on contiguous tensors of 32 or more
//! elements and an exact division otherwise, depending on the tensor's
//! length and memory layout at that moment; the same training step gave
//! different gradients from one repetition to the next. `tests/exactness.rs`
//! catches both. A division is correctly rounded on the CPU, and so is its
//! gradient (`-1 / x^2`, a multiply and a divide).

use burn::tensor::Tensor;

/// `1 / x` elementwise, correctly rounded, with an exact gradient.
pub fn reciprocal<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.ones_like().div(x)
}
