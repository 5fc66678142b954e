//! The demo's convolution: burn's `Conv2d` parameters, computed as im2col
//! (shifted slices of the padded input) and one matmul.
//!
//! Why not `Conv2d::forward`: burn-ndarray 0.21 computes a conv's input
//! gradient with a scalar `conv_transpose2d` loop that took 70–85% of the
//! demo's time on 2 cores. Slices, a stack and a matmul differentiate into
//! slices and matmuls, about ten times faster for these shapes, and give the
//! same numbers (the same products summed in another order). Every
//! normalization in the demo uses this one function, so the comparison stays
//! fair; `Conv2dCbn` gets its output through `forward_conv_output`.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::ops::PadMode;
use burn::tensor::{Tensor};

/// `conv.forward(x)` for a `Conv2d` with stride 1, dilation 1, one group and
/// explicit padding (the demo's 3x3 convs).
///
/// # Panics
///
/// If `conv` has another stride, dilation, groups or padding kind.
pub fn conv2d_im2col(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    assert!(
        conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1,
        "conv2d_im2col handles stride 1, dilation 1, groups 1; got stride {:?}, dilation {:?}, groups {}",
        conv.stride,
        conv.dilation,
        conv.groups
    );
    let PaddingConfig2d::Explicit(top, left, bottom, right) = conv.padding else {
        panic!(
            "conv2d_im2col needs explicit padding, got {:?}",
            conv.padding
        );
    };
    let [n, c_in, _, _] = x.dims();
    let [c_out, _, kh, kw] = conv.weight.dims();
    let x = x.pad((left, right, top, bottom), PadMode::Constant(0.0));
    let [_, _, padded_h, padded_w] = x.dims();
    let (h, w) = (padded_h + 1 - kh, padded_w + 1 - kw);
    // Column index c * kh * kw + i * kw + j, the order of the weight's
    // `[c_out, c_in, kh, kw]` layout flattened.
    let shifted = (0..kh)
        .flat_map(|i| (0..kw).map(move |j| (i, j)))
        .map(|(i, j)| x.clone().slice([0..n, 0..c_in, i..i + h, j..j + w]))
        .collect();
    let columns = Tensor::stack::<5>(shifted, 2).reshape([n, c_in * kh * kw, h * w]);
    let weight = conv.weight.val().reshape([1, c_out, c_in * kh * kw]);
    let y = weight.matmul(columns).reshape([n, c_out, h, w]);
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, c_out, 1, 1]),
        None => y,
    }
}
