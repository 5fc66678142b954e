//! Closed-form Jacobians of per-channel moments with respect to the weight
//! of the layer that produced them, and the Taylor compensation of old
//! moments to the current weight (Cross-Iteration BN).
//!
//! A conv or linear layer computes every output value as an inner product
//! of its channel's weight row with an input patch:
//! `y_c(p) = <W_c, patch(p)> + b_c`. Over the `M` output positions `p` of a
//! batch, the channel's mean `mu_c` and mean of squares `nu_c` then have
//! the derivatives
//!
//! ```text
//! d mu_c / d W_c = (1/M) sum_p patch(p)         = P_g  (the same for every c of group g)
//! d nu_c / d W_c = (2/M) sum_p y_c(p) patch(p)  = Q_c  (the weight gradient of grad_out = 2y/M)
//! d mu_c / d b_c = 1,   d nu_c / d b_c = 2 mu_c
//! ```
//!
//! computed here without a second backward pass (`conv2d_weight_backward`
//! for a conv, one matmul for a linear layer).
//!
//! ## Memory: no weight copies
//!
//! `y` is linear in `(W_c, b_c)`, so `mu` is homogeneous of degree 1 and
//! `nu` of degree 2 in them, and by Euler `<P, W_i> + b_i = mu_i`,
//! `<Q, W_i> + 2 mu_i b_i = 2 nu_i` at the weights `W_i, b_i` they were
//! taken at. The first-order compensation to the current `W, b`,
//!
//! ```text
//! mu_i(W) = mu_i + rho * (<P_i, W - W_i> + (b - b_i))
//! nu_i(W) = nu_i + rho * (<Q_i, W - W_i> + 2 mu_i (b - b_i))
//! ```
//!
//! therefore needs no copy of `W_i`:
//!
//! ```text
//! mu_i(W) = mu_i + rho * (<P_i, W> + b - mu_i)
//! nu_i(W) = nu_i + rho * (<Q_i, W> + 2 mu_i b - 2 nu_i)
//! ```
//!
//! A history entry holds `P` (`G x F` floats), `Q` (`|W|`), `mu` and `nu`
//! (`C` each), against the reference's `3 |W| + 2C`.
//!
//! ## Layout
//!
//! Weights are viewed as `[G, C/G, F]`: `G` groups, `C/G` output channels
//! per group, `F` values per patch (`C_in/G * kh * kw` for a conv, `d_in`
//! for a linear layer).

use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};

/// What one training step contributes to the history: the derivatives of
/// the current per-channel moments with respect to the layer's weight.
#[derive(Debug, Clone)]
pub struct MomentJacobians<B: Backend> {
    /// `d mu / d W` per group, `[G, F]`.
    pub mean: Tensor<B, 2>,
    /// `d nu / d W` per output channel, `[C, F]`.
    pub mean_sq: Tensor<B, 2>,
}

/// Geometry of a 2D convolution with possibly asymmetric padding
/// (`[[top, bottom], [left, right]]`), as burn's `Conv2d` resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: [usize; 2],
    pub padding: [[usize; 2]; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

fn weight_backward<B: Backend>(
    x: Tensor<B, 4>,
    weight_shape: [usize; 4],
    output_grad: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let weight = Tensor::<B, 4>::zeros(weight_shape, &x.device());
    Tensor::from_primitive(TensorPrimitive::Float(B::conv2d_weight_backward(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        output_grad.into_primitive().tensor(),
        options,
    )))
}

/// Jacobians of the per-channel moments of `y = conv2d(x, W) (+ b)`.
///
/// `x` `[N, C_in, H, W]` and `y` `[N, C, H', W']` are used as values (pass
/// them detached); `weight_dims` is `W`'s shape `[C, C_in/G, kh, kw]`.
pub fn conv2d_moment_jacobians<B: Backend>(
    x: Tensor<B, 4>,
    y: Tensor<B, 4>,
    weight_dims: [usize; 4],
    geometry: Conv2dGeometry,
) -> MomentJacobians<B> {
    let [c, cin_g, kh, kw] = weight_dims;
    let g = geometry.groups;
    let [[top, bottom], [left, right]] = geometry.padding;
    // Asymmetric padding ('Same' with an even kernel) is applied to the input
    // up front; the weight-gradient kernel takes symmetric padding only.
    let (x, padding) = if top == bottom && left == right {
        (x, [top, left])
    } else {
        (
            x.pad(
                (left, right, top, bottom),
                burn::tensor::ops::PadMode::Constant(0.0),
            ),
            [0, 0],
        )
    };
    let options = ConvOptions::new(geometry.stride, padding, geometry.dilation, g);
    let [n, _, ho, wo] = y.dims();
    let m = (n * ho * wo) as f64;
    let f = cin_g * kh * kw;

    // P: one output channel per group, gradient 1/M everywhere.
    let ones = Tensor::<B, 4>::full([n, g, ho, wo], 1.0 / m, &y.device());
    let mean =
        weight_backward(x.clone(), [g, cin_g, kh, kw], ones, options.clone()).reshape([g, f]);
    // Q: the weight gradient of grad_out = 2y/M.
    let mean_sq = weight_backward(x, weight_dims, y.mul_scalar(2.0 / m), options).reshape([c, f]);
    MomentJacobians { mean, mean_sq }
}

/// Jacobians of the per-feature moments of `y = x W + b` (burn's `Linear`
/// layout: `x` `[M, d_in]`, `W` `[d_in, d_out]`, `y` `[M, d_out]`).
pub fn linear_moment_jacobians<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>) -> MomentJacobians<B> {
    let [m, d_in] = x.dims();
    let mean = x.clone().mean_dim(0).reshape([1, d_in]);
    let mean_sq = y.transpose().matmul(x).mul_scalar(2.0 / m as f64);
    MomentJacobians { mean, mean_sq }
}

/// History moments compensated to the current weight.
#[derive(Debug, Clone)]
pub struct CompensatedMoments<B: Backend> {
    /// `mu_i(W)`, `[K, C]`.
    pub mean: Tensor<B, 2>,
    /// `nu_i(W)`, `[K, C]`.
    pub mean_sq: Tensor<B, 2>,
}

/// First-order compensation of `K` history entries to the current weight.
///
/// - `mean`, `mean_sq`: the moments when recorded, `[K, C]`;
/// - `jac_mean` `[K, G, F]`, `jac_mean_sq` `[K, C, F]`: their Jacobians;
/// - `weight`: the current weight as `[G, C/G, F]`, `bias` `[C]` if any;
/// - `rho`: the Taylor factor (0 = no compensation, naive averaging).
///
/// Gradients flow into `weight` and `bias` from whatever graph they carry:
/// pass them detached for the reference's constant history terms.
pub fn compensate<B: Backend>(
    mean: Tensor<B, 2>,
    mean_sq: Tensor<B, 2>,
    jac_mean: Tensor<B, 3>,
    jac_mean_sq: Tensor<B, 3>,
    weight: Tensor<B, 3>,
    bias: Option<Tensor<B, 1>>,
    rho: f64,
) -> CompensatedMoments<B> {
    if rho == 0.0 {
        return CompensatedMoments { mean, mean_sq };
    }
    let [k, c] = mean.dims();
    let [g, c_g, f] = weight.dims();
    // <P_i, W_c>: per group, [K, F] x [F, C/G].
    let p_w = jac_mean
        .swap_dims(0, 1)
        .matmul(weight.clone().swap_dims(1, 2))
        .swap_dims(0, 1)
        .reshape([k, g * c_g]);
    // <Q_i, W_c>: elementwise over the patch axis.
    let q_w = jac_mean_sq
        .mul(weight.reshape([1, c, f]))
        .sum_dim(2)
        .reshape([k, c]);
    let (p_w, q_w) = match bias {
        Some(b) => {
            let b = b.reshape([1, c]);
            (
                p_w.add(b.clone()),
                q_w.add(mean.clone().mul(b).mul_scalar(2.0)),
            )
        }
        None => (p_w, q_w),
    };
    let comp_mean = mean.clone().add(p_w.sub(mean).mul_scalar(rho));
    let comp_mean_sq = mean_sq
        .clone()
        .add(q_w.sub(mean_sq.mul_scalar(2.0)).mul_scalar(rho));
    CompensatedMoments {
        mean: comp_mean,
        mean_sq: comp_mean_sq,
    }
}
