//! Closed-form Jacobians of per-channel moments with respect to a 1D
//! convolution's weight (signals, sequences): [`crate::jacobian`]'s
//! formulas along one axis.
//!
//! ```text
//! d mu_c / d W_c = (1/M) sum_p patch(p)         = P_g
//! d nu_c / d W_c = (2/M) sum_p y_c(p) patch(p)  = Q_c
//! ```
//!
//! with `patch(p)` the `C_in/G x k` input values output position `p`
//! reads. `P` is the batch-summed input times the 0/1 tap selection (one
//! small matrix product), `Q` one `conv1d_weight_backward` with
//! `grad_out = 2y/M` (on burn's CPU backends, one matrix product per kernel
//! tap: `tap_products`).
//!
//! `Q` takes the backend's 1D weight gradient on the 3D tensors as they
//! are, not the 2D one on a height-1 view: with burn-fusion (wgpu over
//! lavapipe), a 1D conv's output of length 1 (stride 6,
//! padding 2 and 1: burn-cubecl leaves it with strides `[9, 3, 3]` for
//! shape `[2, 3, 1]`) reads back wrong once reshaped to 4D (two of its six
//! values right, zeros for the rest; an elementwise operation before the
//! reshape, or burn-cubecl without fusion, gives the right ones), and `Q`
//! computed through that view was off by up to 2.3 on values of about 1.

use burn::backend::ops::ModuleOps;
use burn::backend::Dispatch;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use crate::inner::JacobianWork;
use crate::jacobian::{batch_sum, weight_backward, AxisTaps};
use crate::tap_products::{product_route, weight_gradient_by_products, TapGeometry};
use crate::MomentJacobians;

/// Geometry of a 1D convolution with possibly asymmetric padding
/// (`[left, right]`), as burn's `Conv1d` resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dGeometry {
    pub stride: usize,
    pub padding: [usize; 2],
    pub dilation: usize,
    pub groups: usize,
}

impl Conv1dGeometry {
    /// The output length for an input of `length` and a `kernel`.
    pub fn output_len(&self, length: usize, kernel: usize) -> usize {
        crate::shape::conv_output_len(length, kernel, self.stride, self.dilation, self.padding)
    }

    /// As a 3D convolution of depth and height one, for `tap_products`.
    pub(crate) fn taps(&self) -> TapGeometry {
        TapGeometry {
            stride: [1, 1, self.stride],
            padding: [[0, 0], [0, 0], self.padding],
            dilation: [1, 1, self.dilation],
            groups: self.groups,
        }
    }

    /// burn's convolution options for it.
    pub(crate) fn options(&self) -> ConvOptions<1> {
        let [left, right] = self.padding;
        ConvOptions::new_with_padding([self.stride], [(left, right)], [self.dilation], self.groups)
    }
}

/// Jacobians of the per-channel moments of `y = conv1d(x, W) (+ b)`.
///
/// `x` `[N, C_in, L]` and `y` `[N, C, L']` are used as values (the result
/// carries no autodiff graph); `weight_dims` is `W`'s shape
/// `[C, C_in/G, k]`. Runs without autodiff, as
/// [`crate::conv2d_moment_jacobians`]. The result's `mean` is `[G, F]` and
/// `mean_sq` `[C, F]` with `F = C_in/G * k`.
pub fn conv1d_moment_jacobians(
    x: Tensor<3>,
    y: Tensor<3>,
    weight_dims: [usize; 3],
    geometry: Conv1dGeometry,
) -> MomentJacobians {
    Conv1dJacobians {
        weight_dims,
        geometry,
    }
    .run_on_inner(x, y)
}

/// [`conv1d_moment_jacobians`]'s work, for any backend.
#[derive(Debug, Clone, Copy)]
struct Conv1dJacobians {
    weight_dims: [usize; 3],
    geometry: Conv1dGeometry,
}

impl JacobianWork<3> for Conv1dJacobians {
    fn run(self, x: Tensor<3>, y: Tensor<3>) -> MomentJacobians {
        let Conv1dJacobians {
            weight_dims,
            geometry,
        } = self;
        let [c, cin_g, k] = weight_dims;
        let [_, c_in, length] = x.dims();
        let [n, _, l_out] = y.dims();
        let m = (n * l_out) as f64;
        let f = cin_g * k;
        let [left, right] = geometry.padding;
        // P: sum_p patch(p) = X S^T, [C_in, k], X the batch-summed input.
        let taps = AxisTaps {
            kernel: k,
            size: length,
            output: l_out,
            dilation: geometry.dilation,
            stride: geometry.stride,
            pad_before: left,
        };
        // 1/M rides in the selection's entries.
        let selection = Tensor::<2>::from_data(
            TensorData::new(taps.selection_transposed((1.0 / m) as f32), [length, k]),
            &x.device(),
        );
        let mean = batch_sum(x.clone())
            .reshape([c_in, length])
            .matmul(selection)
            .reshape([geometry.groups, f]);
        // Q: the weight gradient of grad_out = 2y/M, taken for grad_out = y
        // and scaled after (C x F values rather than every output value).
        let grad = y;
        let mean_sq = if let Some(route) = product_route(&x.device()) {
            // Matrix products on the input (`tap_products`): a 3D conv of
            // depth and height 1.
            let taps = geometry.taps();
            let volume = |t: Tensor<3>| {
                let [n, c, l] = t.dims();
                t.reshape([n, c, 1, 1, l])
            };
            weight_gradient_by_products(volume(x), volume(grad), [c, cin_g, 1, 1, k], taps, route)
                .reshape([c, f])
        } else {
            // The weight-gradient kernel takes symmetric padding only:
            // asymmetric padding goes onto the input up front.
            let (x, padding) = if left == right {
                (x, left)
            } else {
                (x.pad((left, right, 0, 0), PadMode::Constant(0.0)), 0)
            };
            let options = ConvOptions::new(
                [geometry.stride],
                [padding],
                [geometry.dilation],
                geometry.groups,
            );
            weight_backward(x, weight_dims, grad, |x, w, g| {
                Dispatch::conv1d_weight_backward(x, w, g, options)
            })
            .reshape([c, f])
        };
        let mean_sq = mean_sq.mul_scalar(2.0 / m);
        MomentJacobians { mean, mean_sq }
    }
}
