//! Per-channel batch moments.
//!
//! For an input `x` of shape `[N, C, ...]` the statistics of channel `c` run
//! over every other axis, `M = N * prod(spatial)` values:
//!
//! ```text
//! mean_c = 1/M * sum x[:, c, ...]
//! var_c  = 1/M * sum (x[:, c, ...] - mean_c)^2        (biased)
//! ```
//!
//! The variance is computed from the centered input (two passes), not as
//! `E[x^2] - E[x]^2`, which cancels catastrophically when `|mean| >> std`.
//! The centered input is returned too: every normalization needs it next.

use burn::tensor::{Bool, Tensor};

use crate::shape::{flatten_spatial, mean_axis, per_channel, sum_axis};

/// Batch moments of a `[N, C, ...]` tensor.
#[derive(Debug, Clone)]
pub struct BatchMoments<const D: usize> {
    /// Per-channel mean, shape `[C]`.
    pub mean: Tensor<1>,
    /// Per-channel biased variance, shape `[C]`.
    pub var: Tensor<1>,
    /// `x - mean`, shape of the input.
    pub centered: Tensor<D>,
}

/// Scales a biased variance over `count` values to the unbiased estimate
/// `var * M / (M - 1)`. A no-op for `count <= 1`, where the unbiased estimate
/// is undefined (a batch of one must not produce NaN).
pub fn bessel(var: Tensor<1>, count: usize) -> Tensor<1> {
    if count > 1 {
        var.mul_scalar(bessel_factor(count))
    } else {
        var
    }
}

/// The factor [`bessel`] applies: `M / (M - 1)`, or 1 for `M <= 1`.
pub fn bessel_factor(count: usize) -> f64 {
    if count > 1 {
        count as f64 / (count - 1) as f64
    } else {
        1.0
    }
}

/// Per-channel sum of a `[N, C, ...]` tensor, shape `[C]`.
///
/// Reduces the contiguous trailing axis first, then the batch axis, so no
/// transposed copy of the input is made; an axis of one value (a batch of
/// one, a linear layer's output) is not reduced at all.
pub fn channel_sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let c = x.dims()[1];
    sum_axis(sum_axis(flatten_spatial(x), 2), 0).reshape([c])
}

/// Per-channel mean of a `[N, C, ...]` tensor, shape `[C]`.
pub fn channel_mean<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let dims = x.dims();
    let count = values_per_channel(&dims);
    channel_sum(x).div_scalar(count as f64)
}

/// `M = N * prod(spatial)`: how many values each channel's statistics cover.
pub fn values_per_channel(dims: &[usize]) -> usize {
    dims[0] * dims[2..].iter().product::<usize>()
}

/// Mean and biased variance per channel of `x`, shape `[N, C, ...]`.
///
/// Computed on the `[N, C, S]` view with the per-channel values kept as
/// `[1, C, 1]` until the end: burn's fusion does not merge a reduction
/// with an elementwise operation across a reshape of either's result, so
/// reshaping each sum to `[C]` and back to `[1, C, 1, ...]` cost a kernel
/// per operation on a GPU. The same numbers.
pub fn moments<const D: usize>(x: Tensor<D>) -> BatchMoments<D> {
    let dims = x.dims();
    let (x, mean, var) = moments_per_channel(x);
    BatchMoments {
        centered: x.sub(mean.clone()).reshape(dims),
        mean: mean.reshape([dims[1]]),
        var: var.reshape([dims[1]]),
    }
}

/// [`moments`] as they come: `x` as `[N, C, S]`, its mean and variance
/// `[1, C, 1]`. Work on the statistics before reshaping them keeps it in
/// the reduction's kernel on a GPU.
///
/// The variance's reduction computes `(x - mean)^2` itself, and the caller
/// subtracts the mean again where it needs `x - mean` (the same values):
/// burn's fusion merges the elementwise work before a reduction into it
/// only when nothing else reads that work's result, so a shared
/// `x - mean` cost a kernel of its own. The means are `mean_dim`s, the
/// division inside the reduction: a division after the mean's sum was an
/// operation the planner grouped with the variance's subtraction, out of
/// the variance's reduction.
pub(crate) fn moments_per_channel<const D: usize>(
    x: Tensor<D>,
) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let x = flatten_spatial(x);
    let channel_mean = |x: Tensor<3>| mean_axis(x.mean_dim(2), 0);
    let mean = channel_mean(x.clone());
    let var = channel_mean(x.clone().sub(mean.clone()).square());
    (x, mean, var)
}

/// Mean and biased variance per channel of a padded sequence batch.
///
/// `x` has shape `[N, C, L]`, `padding` shape `[N, L]` with `true` marking
/// padding positions. Padding is excluded from the statistics; `centered` is
/// still returned for every position (padding included), as the layers
/// normalize the whole tensor. The number of kept positions stays on the
/// device (no host synchronisation); it is clamped to at least 1, so an
/// all-padding batch gives mean 0 and variance 0 instead of NaN.
pub fn masked_moments(x: Tensor<3>, padding: Tensor<2, Bool>) -> BatchMoments<3> {
    let [n, _, l] = x.dims();
    let keep = padding.bool_not().float().reshape([n, 1, l]);
    let count = keep.clone().sum().clamp_min(1.0);
    let mean = channel_sum(x.clone().mul(keep.clone())).div(count.clone());
    let centered = x.sub(per_channel::<3>(mean.clone()));
    let var = channel_sum(centered.clone().mul(keep).square()).div(count);
    BatchMoments {
        mean,
        var,
        centered,
    }
}
