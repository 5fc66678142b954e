//! What the conv blocks ([`Conv1dCbn`](crate::Conv1dCbn),
//! [`Conv2dCbn`](crate::Conv2dCbn), [`Conv3dCbn`](crate::Conv3dCbn)) share: burn's `Same` padding rule, and
//! the CBN of a convolution's output.

use burn::module::Param;
use burn::tensor::Tensor;

use bnorm_core::MomentJacobians;

use crate::CrossIterBatchNorm;

/// burn's `Same` padding along one axis, `[before, after]`: the output is
/// `ceil(size / stride)` long, and the extra pixel of an odd total goes to
/// the end.
pub(crate) fn same_padding(kernel: usize, stride: usize, size: usize) -> [usize; 2] {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    [total / 2, total - total / 2]
}

/// Panics, naming the expected and the received shape, unless an input of
/// shape `dims` has the input channels of a conv with weight `weight`
/// `[C, C_in/G, k...]` and `groups`; `block` names the layer and `axes`
/// its spatial axes in the message. Called before any state changes.
pub(crate) fn check_conv_input<const D: usize>(
    block: &str,
    axes: &str,
    dims: &[usize; D],
    (weight, groups): (&Param<Tensor<D>>, usize),
) {
    let c_in = weight.dims()[1] * groups;
    if dims[1] != c_in {
        panic!("{block} expects an input of shape [batch_size, {c_in}, {axes}], received {dims:?}");
    }
}

/// Panics, naming the input's shape, the kernel's reach and the padding,
/// unless every spatial axis of an input of shape `dims` (`[N, C, ...]`),
/// padded by `padding[a]` (before, after), holds the dilated kernel:
/// `size + before + after >= dilation (kernel - 1) + 1`. `axes` names the
/// spatial axes in the message. Called before any state changes.
pub(crate) fn check_conv_extent(
    block: &str,
    axes: &str,
    dims: &[usize],
    kernel: &[usize],
    dilation: &[usize],
    padding: &[[usize; 2]],
) {
    let spatial = &dims[2..];
    let reach: Vec<usize> = kernel
        .iter()
        .zip(dilation)
        .map(|(k, d)| d * (k - 1) + 1)
        .collect();
    let fits = spatial
        .iter()
        .zip(&reach)
        .zip(padding)
        .all(|((size, reach), [before, after])| size + before + after >= *reach);
    if !fits {
        panic!(
            "{block} expects an input whose {axes} {spatial:?}, padded by {padding:?}, hold the \
             dilated kernel {reach:?}, received shape {dims:?}"
        );
    }
}

/// Panics, naming both shapes, unless `conv_output` is `expected`, the
/// conv's output shape for an input of shape `input`; `block` names the
/// layer in the message. Called before any state changes.
pub(crate) fn check_conv_output<const D: usize>(
    block: &str,
    input: &[usize; D],
    conv_output: &[usize; D],
    expected: [usize; D],
) {
    if *conv_output != expected {
        panic!(
            "{block}: the conv output for an input of shape {input:?} has shape {expected:?}, \
             received {conv_output:?}"
        );
    }
}

/// A convolution's weight `[C, C_in/G, k...]`, bias and groups `G`.
pub(crate) type ConvParams<'a, const D: usize> =
    (&'a Param<Tensor<D>>, &'a Option<Param<Tensor<1>>>, usize);

impl CrossIterBatchNorm {
    /// The normalization of `y`, the output of a convolution of `input`
    /// with `weight` `[C, C_in/G, k...]`, `groups` `G` and `bias`: in
    /// training, the weight viewed as `[G, C/G, F]` and the Jacobians from
    /// the detached input and output (`jacobians(x, y, weight shape)`); in
    /// inference, the running statistics.
    pub(crate) fn forward_conv<const D: usize>(
        &self,
        input: Tensor<D>,
        y: Tensor<D>,
        (weight, bias, groups): ConvParams<'_, D>,
        jacobians: impl FnOnce(Tensor<D>, Tensor<D>, [usize; D]) -> MomentJacobians,
    ) -> Tensor<D> {
        if !self.is_training(&y.device()) {
            return self.forward_frozen(y);
        }
        let dims = weight.dims();
        let patch_len = dims[1..].iter().product();
        let weight = weight.val().reshape([groups, dims[0] / groups, patch_len]);
        let bias = bias.as_ref().map(|b| b.val());
        let (x_values, y_values) = (input.detach(), y.clone().detach());
        self.forward_with(y, weight, bias, || jacobians(x_values, y_values, dims))
    }
}
