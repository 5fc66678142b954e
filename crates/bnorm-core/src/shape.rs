//! Shape checks and broadcast helpers shared by every layer.
//!
//! The layers follow burn's convention for bad input: a panic whose message
//! names what was expected and what came. The checks run before any state is
//! touched, so a rejected call leaves the module exactly as it was.

use burn::tensor::Tensor;

/// The output length of a convolution along one axis for an input of
/// `size` (burn's formula): `(size + before + after - dilation (kernel - 1)
/// - 1) / stride + 1`.
pub fn conv_output_len(
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    [before, after]: [usize; 2],
) -> usize {
    let span = dilation * (kernel - 1) + 1;
    (size + before + after).saturating_sub(span) / stride + 1
}

/// `x.sum_dim(dim)`, but `x` itself where that axis holds one value (a
/// batch of one, the case this library is for): the same numbers, without
/// a reduction that on a GPU is a kernel in the forward pass and, through
/// burn-autodiff's gradient of `sum_dim` (which reduces the gradient over
/// the axis again), kernels in the backward pass too.
pub fn sum_axis<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if x.dims()[dim] == 1 {
        x
    } else {
        x.sum_dim(dim)
    }
}

/// `x.mean_dim(dim)`, but `x` itself where that axis holds one value, as
/// [`sum_axis`].
pub fn mean_axis<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if x.dims()[dim] == 1 {
        x
    } else {
        x.mean_dim(dim)
    }
}

/// Shape `[1, C, 1, ...]` of rank `D`, for broadcasting a per-channel vector
/// against a `[N, C, ...]` tensor.
pub fn channel_shape<const D: usize>(channels: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[1] = channels;
    shape
}

/// Reshapes a per-channel vector `[C]` to `[1, C, 1, ...]` of rank `D`.
pub fn per_channel<const D: usize>(v: Tensor<1>) -> Tensor<D> {
    let [c] = v.dims();
    v.reshape(channel_shape::<D>(c))
}

/// Views `[N, C, ...]` as `[N, C, S]` (S = product of the spatial dims, 1 for
/// rank 2). A reshape of a contiguous tensor, no copy.
pub fn flatten_spatial<const D: usize>(x: Tensor<D>) -> Tensor<3> {
    let dims = x.dims();
    let spatial: usize = dims[2..].iter().product();
    x.reshape([dims[0], dims[1], spatial])
}

/// Panics unless `D` is in `2..=5` and `dims[1] == channels`.
///
/// `layer` names the caller in the message, e.g. `"BatchRenorm"`.
pub fn check_input<const D: usize>(layer: &str, dims: &[usize; D], channels: usize) {
    if !(2..=5).contains(&D) {
        panic!(
            "{layer} expects an input of rank 2 to 5 with shape [batch_size, channels, ...], \
             received a rank-{D} tensor of shape {dims:?}"
        );
    }
    if dims[1] != channels {
        panic!(
            "{layer} was built for {channels} channels and expects an input of shape \
             [batch_size, {channels}, ...], received shape {dims:?} ({} channels)",
            dims[1]
        );
    }
    if dims[0] == 0 {
        panic!("{layer} received an empty batch: input shape {dims:?}");
    }
}

/// Panics unless `mask` has shape `[N, L]` for an input of shape `[N, C, L]`.
pub fn check_mask(layer: &str, input_dims: &[usize; 3], mask_dims: &[usize; 2]) {
    let [n, _, l] = *input_dims;
    if mask_dims != &[n, l] {
        panic!(
            "{layer} expects a padding mask of shape [batch_size, length] = [{n}, {l}] for an \
             input of shape {input_dims:?}, received a mask of shape {mask_dims:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::sum_axis;
    use crate::test_bits::bits;
    use burn::tensor::{Distribution, Tensor};

    /// `sum_axis` is `sum_dim`, value and gradient, bit for bit, on axes of
    /// one value (where it skips the reduction) and of several.
    #[test]
    fn sum_axis_is_sum_dim() {
        let device = crate::test_bits::autodiff_device();
        for dims in [[1, 3, 4], [2, 3, 4], [2, 1, 4]] {
            for axis in 0..3 {
                let x = Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
                let weights = Tensor::<3>::random(
                    x.clone().sum_dim(axis).dims(),
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let run = |skip: bool| {
                    let x = x.clone().detach().require_grad();
                    let sum = if skip {
                        sum_axis(x.clone(), axis)
                    } else {
                        x.clone().sum_dim(axis)
                    };
                    let grads = sum.clone().mul(weights.clone()).sum().backward();
                    (bits(sum.inner()), bits(x.grad(&grads).unwrap()))
                };
                assert_eq!(run(true), run(false), "dims {dims:?}, axis {axis}");
            }
        }
    }
}
