//! Closed-form Jacobians of per-channel moments with respect to a 3D
//! convolution's weight: [`crate::jacobian`]'s formulas for volumes.
//!
//! ```text
//! d mu_c / d W_c = (1/M) sum_p patch(p)         = P_g
//! d nu_c / d W_c = (2/M) sum_p y_c(p) patch(p)  = Q_c
//! ```
//!
//! with `patch(p)` the `C_in/G x kd x kh x kw` input values output position
//! `p` reads. `Q` is one `conv3d_weight_backward` with `grad_out = 2y/M`
//! (on burn's CPU backends, a few matrix products on the input itself:
//! `tap_products`).
//! `P` separates along the three axes as in 2D: with the input summed over
//! the batch, each depth plane's row and column tap selections (two small
//! matrix products over all planes at once), then the depth tap selection
//! (one more), so a `3 x 3 x 3` kernel costs three products, not 27 slices.

use burn::backend::ops::ModuleOps;
use burn::backend::Dispatch;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use crate::inner::JacobianWork;
use crate::jacobian::{batch_sum, plane_patch_sums, weight_backward, AxisTaps};
use crate::tap_products::{product_route, weight_gradient_by_products, TapGeometry};
use crate::MomentJacobians;

/// Geometry of a 3D convolution (axes depth, height, width), with burn's
/// `Conv3d` symmetric padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dGeometry {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl Conv3dGeometry {
    /// The output `[depth, height, width]` for an input of `size` and a
    /// `kernel`.
    pub fn output_size(&self, size: [usize; 3], kernel: [usize; 3]) -> [usize; 3] {
        [0, 1, 2].map(|a| {
            let (stride, dilation, pad) = (self.stride[a], self.dilation[a], self.padding[a]);
            crate::shape::conv_output_len(size[a], kernel[a], stride, dilation, [pad, pad])
        })
    }

    /// For `tap_products`.
    pub(crate) fn taps(&self) -> TapGeometry {
        TapGeometry {
            stride: self.stride,
            padding: self.padding.map(|p| [p, p]),
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    /// burn's convolution options for it.
    pub(crate) fn options(&self) -> ConvOptions<3> {
        ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
    }
}

/// Jacobians of the per-channel moments of `y = conv3d(x, W) (+ b)`.
///
/// `x` `[N, C_in, D, H, W]` and `y` `[N, C, D', H', W']` are used as values
/// (the result carries no autodiff graph); `weight_dims` is `W`'s shape
/// `[C, C_in/G, kd, kh, kw]`. Runs without autodiff, as
/// [`crate::conv2d_moment_jacobians`]. The result's
/// `mean` is `[G, F]` and `mean_sq` `[C, F]` with `F = C_in/G kd kh kw`.
pub fn conv3d_moment_jacobians(
    x: Tensor<5>,
    y: Tensor<5>,
    weight_dims: [usize; 5],
    geometry: Conv3dGeometry,
) -> MomentJacobians {
    Conv3dJacobians {
        weight_dims,
        geometry,
    }
    .run_on_inner(x, y)
}

/// [`conv3d_moment_jacobians`]'s work, for any backend.
#[derive(Debug, Clone, Copy)]
struct Conv3dJacobians {
    weight_dims: [usize; 5],
    geometry: Conv3dGeometry,
}

impl JacobianWork<5> for Conv3dJacobians {
    fn run(self, x: Tensor<5>, y: Tensor<5>) -> MomentJacobians {
        let Conv3dJacobians {
            weight_dims,
            geometry,
        } = self;
        let [c, cin_g, kd, kh, kw] = weight_dims;
        let [n, _, d_out, h_out, w_out] = y.dims();
        let m = (n * d_out * h_out * w_out) as f64;
        let f = cin_g * kd * kh * kw;
        let mean = volume_patch_sum(x.clone(), [kd, kh, kw], [d_out, h_out, w_out], geometry, m)
            .reshape([geometry.groups, f]);
        // Q: the weight gradient of grad_out = 2y/M, taken for grad_out = y
        // and scaled after (C x F values rather than every output value).
        let grad = y;
        let mean_sq = if let Some(route) = product_route(&x.device()) {
            let taps = geometry.taps();
            weight_gradient_by_products(x, grad, weight_dims, taps, route).reshape([c, f])
        } else {
            let options = ConvOptions::new(
                geometry.stride,
                geometry.padding,
                geometry.dilation,
                geometry.groups,
            );
            weight_backward(x, weight_dims, grad, |x, w, g| {
                Dispatch::conv3d_weight_backward(x, w, g, options)
            })
            .reshape([c, f])
        };
        let mean_sq = mean_sq.mul_scalar(2.0 / m);
        MomentJacobians { mean, mean_sq }
    }
}

/// `sum_p patch(p) / divisor` over every output position of the conv, per
/// input channel and kernel tap: `[C_in, kd, kh * kw]` (the division rides
/// in the row selection's entries, see `plane_patch_sums`).
fn volume_patch_sum(
    x: Tensor<5>,
    kernel: [usize; 3],
    output: [usize; 3],
    geometry: Conv3dGeometry,
    divisor: f64,
) -> Tensor<3> {
    let [_, c_in, depth, height, width] = x.dims();
    let size = [depth, height, width];
    let [depth_taps, rows, columns] = [0, 1, 2].map(|axis| AxisTaps {
        kernel: kernel[axis],
        size: size[axis],
        output: output[axis],
        dilation: geometry.dilation[axis],
        stride: geometry.stride[axis],
        pad_before: geometry.padding[axis],
    });
    let device = x.device();
    let [kd, kh, kw] = kernel;
    // Every depth plane of every channel: [C_in * D, kh, kw].
    let planes = plane_patch_sums(
        batch_sum(x).reshape([c_in * depth, height, width]),
        [rows, columns],
        (1.0 / divisor) as f32,
    );
    let depth_selection = Tensor::<3>::from_data(
        TensorData::new(depth_taps.selection(1.0), [1, kd, depth]),
        &device,
    );
    depth_selection.matmul(planes.reshape([c_in, depth, kh * kw]))
}

#[cfg(test)]
mod tests {
    use super::{conv3d_moment_jacobians, Conv3dGeometry, Conv3dJacobians};
    use crate::inner::JacobianWork;
    use burn::tensor::module::conv3d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tensor};

    /// On an autodiff device the 3D Jacobians run without autodiff: bit
    /// for bit the same work through autodiff, for a grouped, strided,
    /// padded, dilated conv and a batch of one.
    #[test]
    fn inner_backend_conv3d_jacobians_are_bit_identical() {
        let device = crate::test_bits::autodiff_device();
        let geometry = Conv3dGeometry {
            stride: [2, 1, 1],
            padding: [1, 0, 2],
            dilation: [1, 2, 1],
            groups: 2,
        };
        for batch in [1, 2] {
            let x =
                Tensor::<5>::random([batch, 4, 5, 6, 4], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<5>::random([6, 2, 3, 2, 3], Distribution::Normal(0.0, 1.0), &device);
            let options = ConvOptions::new([2, 1, 1], [1, 0, 2], [1, 2, 1], 2);
            let y = conv3d(x.clone(), w, None, options);
            let dims = [6, 2, 3, 2, 3];
            let inner = conv3d_moment_jacobians(x.clone(), y.clone(), dims, geometry);
            let wrapped = Conv3dJacobians {
                weight_dims: dims,
                geometry,
            }
            .run(x, y);
            for (a, b) in [(inner.mean, wrapped.mean), (inner.mean_sq, wrapped.mean_sq)] {
                let bits = |t: Tensor<2>| {
                    let values = t.to_data().try_to_vec::<f32>().unwrap();
                    values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(bits(a), bits(b), "batch {batch}");
            }
        }
    }
}
