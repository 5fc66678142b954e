//! A convolution's weight gradient as one matrix product per kernel tap,
//! for backends whose own weight-gradient kernel is slow.
//!
//! burn-ndarray and burn-flex have no weight-gradient kernel of their own:
//! burn's default decomposes it into a forward convolution of the input
//! (batch and channels swapped) with the output gradient as the kernel.
//! That convolution has a kernel as large as the output and an output as
//! small as the kernel, a shape their convolutions are not built for
//! (burn-ndarray loops innermost along the output's width, here the
//! kernel's few values; burn-flex runs many thin matrix products). The
//! products here have the layer's own channel counts as their sides.
//! `docs/performance.md` has the measurements.
//!
//! Tap `t` of the kernel reads the (padded) input at every output position
//! shifted by `t * dilation`: a strided slice the size of one input. Per
//! weight group, its column of the gradient is
//!
//! ```text
//! dW[:, :, t] = sum over the batch of  grad [C/G, P] x slice_t [P, C_in/G]
//! ```
//!
//! with `P` the output positions: the same sums as the backend's weight
//! gradient, in another order, one input-sized copy live at a time (an
//! im2col matrix would hold all `kd kh kw` at once). On a GPU this would be
//! a launch per tap: the layers use it on the CPU backends only.

use burn::tensor::ops::PadMode;
use burn::tensor::{Slice, Tensor};

/// Stride, padding (`[before, after]` per axis), dilation and groups of a
/// 3D convolution (a 2D one has a depth axis of one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapGeometry {
    pub stride: [usize; 3],
    pub padding: [[usize; 2]; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

/// The weight gradient `[C, C_in/G, kd * kh * kw]` of a 3D conv with
/// input `x` `[N, C_in, D, H, W]`, output gradient `grad`
/// `[N, C, D', H', W']` and weight shape `[C, C_in/G, kd, kh, kw]`, as
/// one matrix product per kernel tap (see the module docs).
pub(crate) fn weight_gradient_per_tap(
    x: Tensor<5>,
    grad: Tensor<5>,
    [c, cin_g, kd, kh, kw]: [usize; 5],
    geometry: TapGeometry,
) -> Tensor<3> {
    let TapGeometry {
        stride,
        padding,
        dilation,
        groups,
    } = geometry;
    let [n, _, d_out, h_out, w_out] = grad.dims();
    let positions = d_out * h_out * w_out;
    let x = if padding.iter().flatten().any(|&p| p > 0) {
        x.pad(
            padding.map(|[before, after]| (before, after)),
            PadMode::Constant(0.0),
        )
    } else {
        x
    };
    let grad = grad.reshape([n, groups, c / groups, positions]);
    let output = [d_out, h_out, w_out];
    let taps = (0..kd).flat_map(|i| (0..kh).flat_map(move |j| (0..kw).map(move |k| [i, j, k])));
    let columns = taps
        .map(|tap| {
            let [depth, rows, columns] = [0, 1, 2].map(|axis| {
                let first = tap[axis] * dilation[axis];
                let last = first + (output[axis] - 1) * stride[axis];
                Slice::new(
                    first as isize,
                    Some(last as isize + 1),
                    stride[axis] as isize,
                )
            });
            let full = Slice::new(0, None, 1);
            let window = x
                .clone()
                .slice([full, full, depth, rows, columns])
                .reshape([n, groups, cin_g, positions])
                .swap_dims(2, 3);
            // [N, G, C/G, C_in/G], summed over the batch.
            let column = grad.clone().matmul(window);
            let column = crate::shape::sum_axis(column, 0);
            column.reshape([c, cin_g, 1])
        })
        .collect();
    Tensor::cat(columns, 2)
}
