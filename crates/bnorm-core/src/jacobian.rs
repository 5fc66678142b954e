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
//! computed here without a second backward pass: for a conv, `P` from the
//! batch-summed input with two small 0/1 tap-selection products and `Q`
//! with one `conv2d_weight_backward` (on burn's CPU backends, a few matrix
//! products on the input itself instead: `tap_products`); for a linear
//! layer, a mean and one matmul. [`crate::conv3d_jacobian`] does the same
//! for volumes.
//!
//!
//! What an entry keeps and how it is compensated to the current weight:
//! [`crate::compensation`].

use burn::backend::ops::ModuleOps;
use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Slice, Tensor, TensorData};

use crate::compensation::MomentJacobians;
use crate::inner::JacobianWork;
use crate::tap_products::{product_route, weight_gradient_by_products, TapGeometry};

/// Geometry of a 2D convolution with possibly asymmetric padding
/// (`[[top, bottom], [left, right]]`), as burn's `Conv2d` resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: [usize; 2],
    pub padding: [[usize; 2]; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dGeometry {
    /// The output `[height, width]` for an input of `size` and a `kernel`.
    pub fn output_size(&self, size: [usize; 2], kernel: [usize; 2]) -> [usize; 2] {
        [0, 1].map(|a| {
            let (stride, dilation) = (self.stride[a], self.dilation[a]);
            crate::shape::conv_output_len(size[a], kernel[a], stride, dilation, self.padding[a])
        })
    }

    /// As a 3D convolution of depth one, for `tap_products`.
    pub(crate) fn taps(&self) -> TapGeometry {
        let [[top, bottom], [left, right]] = self.padding;
        TapGeometry {
            stride: [1, self.stride[0], self.stride[1]],
            padding: [[0, 0], [top, bottom], [left, right]],
            dilation: [1, self.dilation[0], self.dilation[1]],
            groups: self.groups,
        }
    }

    /// burn's convolution options for it.
    pub(crate) fn options(&self) -> ConvOptions<2> {
        let [[top, bottom], [left, right]] = self.padding;
        ConvOptions::new_with_padding(
            self.stride,
            [(top, bottom), (left, right)],
            self.dilation,
            self.groups,
        )
    }
}

/// A weight gradient `[C, C_in/G, k...]` from the backend's
/// `conv{1,2,3}d_weight_backward` (`op`, given as `(x, weight, grad)`),
/// called on burn's dispatch backend: burn has a tensor-level function for
/// the 2D one only.
pub(crate) fn weight_backward<const D: usize>(
    x: Tensor<D>,
    weight_shape: [usize; D],
    output_grad: Tensor<D>,
    op: impl FnOnce(DispatchTensor, DispatchTensor, DispatchTensor) -> DispatchTensor,
) -> Tensor<D> {
    // Only its shape is read (burn's default, cubecl and fusion kernels
    // alike): `empty` allocates without a fill kernel.
    let weight = Tensor::<D>::empty(weight_shape, &x.device());
    Tensor::from_dispatch(op(
        x.into_dispatch(),
        weight.into_dispatch(),
        output_grad.into_dispatch(),
    ))
}

/// Jacobians of the per-channel moments of `y = conv2d(x, W) (+ b)`.
///
/// `x` `[N, C_in, H, W]` and `y` `[N, C, H', W']` are used as values (the
/// result carries no autodiff graph); `weight_dims` is `W`'s shape
/// `[C, C_in/G, kh, kw]`. The work runs
/// without autodiff (see `inner`): no autodiff bookkeeping, and `Q`
/// through the backend's own weight-gradient kernel (on burn-ndarray and
/// burn-flex, whose kernel is burn's generic one, as a few matrix
/// products on the input itself: `tap_products`).
pub fn conv2d_moment_jacobians(
    x: Tensor<4>,
    y: Tensor<4>,
    weight_dims: [usize; 4],
    geometry: Conv2dGeometry,
) -> MomentJacobians {
    ConvJacobians {
        weight_dims,
        geometry,
    }
    .run_on_inner(x, y)
}

/// [`conv2d_moment_jacobians`]'s work, for any backend.
#[derive(Debug, Clone, Copy)]
struct ConvJacobians {
    weight_dims: [usize; 4],
    geometry: Conv2dGeometry,
}

impl JacobianWork<4> for ConvJacobians {
    fn run(self, x: Tensor<4>, y: Tensor<4>) -> MomentJacobians {
        let ConvJacobians {
            weight_dims,
            geometry,
        } = self;
        let [c, cin_g, kh, kw] = weight_dims;
        let [n, _, ho, wo] = y.dims();
        let m = (n * ho * wo) as f64;
        let f = cin_g * kh * kw;
        let mean =
            patch_mean(x.clone(), [kh, kw], [ho, wo], geometry).reshape([geometry.groups, f]);
        // Q: the weight gradient of grad_out = 2y/M, taken for grad_out = y
        // and scaled after (C x F values rather than every output value).
        let grad = y;
        let mean_sq = if let Some(route) = product_route(&x.device()) {
            // Matrix products on the input (`tap_products`): a 3D conv with
            // a depth of one.
            let volume = |t: Tensor<4>| t.unsqueeze_dim::<5>(2);
            let taps = geometry.taps();
            weight_gradient_by_products(volume(x), volume(grad), [c, cin_g, 1, kh, kw], taps, route)
                .reshape([c, f])
        } else {
            conv2d_weight_gradient(x, grad, weight_dims, geometry)
        };
        let mean_sq = mean_sq.mul_scalar(2.0 / m);
        MomentJacobians { mean, mean_sq }
    }
}

/// The weight gradient `[C, F]` (`F = C_in/G * kh * kw`) of a conv with
/// input `x` `[N, C_in, H, W]`, weight shape `weight_dims`
/// `[C, C_in/G, kh, kw]` and output gradient `grad` `[N, C, Ho, Wo]`, in
/// one weight-gradient convolution of the backend (`Q` is this with
/// `grad = 2y/M`).
fn conv2d_weight_gradient(
    x: Tensor<4>,
    grad: Tensor<4>,
    weight_dims: [usize; 4],
    geometry: Conv2dGeometry,
) -> Tensor<2> {
    let [c, cin_g, kh, kw] = weight_dims;
    let [[top, bottom], [left, right]] = geometry.padding;
    // Asymmetric padding ('Same' with an even kernel) is applied to the
    // input up front; the weight-gradient kernel takes symmetric padding
    // only.
    let (x, padding) = if top == bottom && left == right {
        (x, [top, left])
    } else {
        (
            x.pad((left, right, top, bottom), PadMode::Constant(0.0)),
            [0, 0],
        )
    };
    let options = ConvOptions::new(geometry.stride, padding, geometry.dilation, geometry.groups);
    weight_backward(x, weight_dims, grad, |x, w, g| {
        Dispatch::conv2d_weight_backward(x, w, g, options)
    })
    .reshape([c, cin_g * kh * kw])
}

/// `P = sum_p patch(p) / M` over the `M` output positions `p` of the conv
/// (batch included), per input channel and kernel tap: `[C_in, kh, kw]`.
///
/// This is the weight gradient of an all-ones output gradient; computed as
/// one it would be a second full weight-gradient convolution. The sum
/// separates instead: tap `(i, j)` reads input
/// row `o * stride + i * dilation - pad` for output row `o` (and likewise
/// columns). With `S_h[i, r] = 1` when tap row `i` reads input row `r` for
/// some output row and 0 otherwise (padding adds zero, so it needs no
/// entry), and `S_w` likewise for columns,
///
/// ```text
/// sum_p patch(p)[c, i, j] = sum_{r, s} S_h[i, r] X[c, r, s] S_w[j, s]
/// ```
///
/// with `X` the input summed over the batch: one reduction and two small
/// matrix products whatever the kernel size, where a slice and a sum per
/// tap row and column would each be a kernel launch on a GPU. A tap
/// reads a given row at most once, so the selections are 0/1 (`S_h`'s
/// ones are `1/M` here, which divides by `M` in the product) and the
/// products are sums of input values (on CUDA in TF32, like every burn-cuda
/// matmul: the history's linearization points keep that error off the
/// compensation, see the module docs).
fn patch_mean(
    x: Tensor<4>,
    kernel: [usize; 2],
    output: [usize; 2],
    geometry: Conv2dGeometry,
) -> Tensor<3> {
    let count = (x.dims()[0] * output[0] * output[1]) as f32;
    let [_, c_in, height, width] = x.dims();
    let size = [height, width];
    let axes = [0, 1].map(|axis| AxisTaps {
        kernel: kernel[axis],
        size: size[axis],
        output: output[axis],
        dilation: geometry.dilation[axis],
        stride: geometry.stride[axis],
        pad_before: geometry.padding[axis][0],
    });
    plane_patch_sums(
        batch_sum(x).reshape([c_in, height, width]),
        axes,
        1.0 / count,
    )
}

/// `x` `[N, ...]` summed over the batch, `[1, ...]`: a reshape, not a
/// reduction, for a batch of one (the case this library is for).
pub(crate) fn batch_sum<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    crate::shape::sum_axis(x, 0)
}

/// One spatial axis of a convolution, as its tap selection sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AxisTaps {
    pub kernel: usize,
    pub size: usize,
    pub output: usize,
    pub dilation: usize,
    pub stride: usize,
    pub pad_before: usize,
}

impl AxisTaps {
    /// `S[tap, r]`, `[kernel, size]` row-major: `value` where kernel tap
    /// `tap` reads input row `r` for some output position, 0 elsewhere
    /// (padding adds zero, so it needs no entry). A `value` other than 1
    /// carries a constant factor of the product `S` takes part in, made on
    /// the host, which spares the GPU a kernel for it.
    pub(crate) fn selection(self, value: f32) -> Vec<f32> {
        let mut selection = vec![0.0f32; self.kernel * self.size];
        for tap in 0..self.kernel {
            let offset = tap * self.dilation;
            let rows = tap_rows(self.size, self.output, offset, self.stride, self.pad_before);
            for row in rows.into_iter().flatten() {
                selection[tap * self.size + row as usize] = value;
            }
        }
        selection
    }

    /// `S` transposed, `[size, kernel]` row-major.
    pub(crate) fn selection_transposed(self, value: f32) -> Vec<f32> {
        let selection = self.selection(value);
        (0..self.size * self.kernel)
            .map(|i| selection[(i % self.kernel) * self.size + i / self.kernel])
            .collect()
    }
}

/// `scale S_h X_p S_w^T` for every plane `X_p` of `planes` `[P, H, W]`:
/// the patch sums `[P, kh, kw]` of a 2D convolution with row taps `rows`
/// and column taps `columns` (see [`patch_mean`]), times `scale`. Two small
/// matrix products; `scale` rides in `S_h`'s entries (made on the host),
/// which spares the GPU a kernel for it.
pub(crate) fn plane_patch_sums(
    planes: Tensor<3>,
    [rows, columns]: [AxisTaps; 2],
    scale: f32,
) -> Tensor<3> {
    let device = planes.device();
    let (kh, height) = (rows.kernel, rows.size);
    let (kw, width) = (columns.kernel, columns.size);
    let rows = Tensor::<3>::from_data(
        TensorData::new(rows.selection(scale), [1, kh, height]),
        &device,
    );
    let columns = Tensor::<3>::from_data(
        TensorData::new(columns.selection_transposed(1.0), [1, width, kw]),
        &device,
    );
    rows.matmul(planes).matmul(columns)
}

/// The input rows (along one axis) that kernel tap offset `offset`
/// (`tap * dilation`) reads over `output` output positions, as a strided
/// slice of the unpadded input; `None` when every one lies in the padding.
fn tap_rows(
    size: usize,
    output: usize,
    offset: usize,
    stride: usize,
    pad_before: usize,
) -> Option<Slice> {
    // Row read by output position o: o * stride + offset - pad_before.
    let first = pad_before.saturating_sub(offset).div_ceil(stride);
    let last = (size + pad_before).checked_sub(offset + 1)? / stride;
    let last = last.min(output.checked_sub(1)?);
    if first > last {
        return None;
    }
    let row = |o: usize| (o * stride + offset - pad_before) as isize;
    Some(Slice::new(row(first), Some(row(last) + 1), stride as isize))
}

/// Jacobians of the per-feature moments of `y = x W + b` (burn's `Linear`
/// layout: `x` `[M, d_in]`, `W` `[d_in, d_out]`, `y` `[M, d_out]`), from
/// their values, without autodiff, as [`conv2d_moment_jacobians`].
pub fn linear_moment_jacobians(x: Tensor<2>, y: Tensor<2>) -> MomentJacobians {
    LinearJacobians.run_on_inner(x, y)
}

/// [`linear_moment_jacobians`]'s work, for any backend.
#[derive(Debug, Clone, Copy)]
struct LinearJacobians;

impl JacobianWork<2> for LinearJacobians {
    fn run(self, x: Tensor<2>, y: Tensor<2>) -> MomentJacobians {
        let [m, d_in] = x.dims();
        let mean = x.clone().mean_dim(0).reshape([1, d_in]);
        let mean_sq = y.transpose().matmul(x).mul_scalar(2.0 / m as f64);
        MomentJacobians { mean, mean_sq }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        conv2d_moment_jacobians, linear_moment_jacobians, tap_rows, Conv2dGeometry, ConvJacobians,
        LinearJacobians, MomentJacobians,
    };
    use crate::inner::JacobianWork;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tensor};

    fn bits(jacobians: MomentJacobians) -> [Vec<u32>; 2] {
        [jacobians.mean, jacobians.mean_sq].map(|t| {
            t.to_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
    }

    /// On an autodiff device the Jacobians run without autodiff (`inner`):
    /// bit for bit what the same work gives through autodiff,
    /// for a grouped, strided, asymmetrically padded, dilated conv and for
    /// a linear layer.
    #[test]
    fn inner_backend_jacobians_are_bit_identical() {
        let device = crate::test_bits::autodiff_device();
        let x = Tensor::<4>::random([2, 4, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([6, 2, 3, 2], Distribution::Normal(0.0, 1.0), &device);
        let geometry = Conv2dGeometry {
            stride: [2, 1],
            padding: [[1, 2], [0, 1]],
            dilation: [1, 2],
            groups: 2,
        };
        let options = ConvOptions::new_with_padding([2, 1], [(1, 2), (0, 1)], [1, 2], 2);
        let y = conv2d(x.clone(), w, None, options);
        let work = ConvJacobians {
            weight_dims: [6, 2, 3, 2],
            geometry,
        };
        assert_eq!(
            bits(conv2d_moment_jacobians(
                x.clone(),
                y.clone(),
                [6, 2, 3, 2],
                geometry
            )),
            bits(work.run(x, y))
        );
        let x = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(
            bits(linear_moment_jacobians(x.clone(), y.clone())),
            bits(LinearJacobians.run(x, y))
        );
    }

    /// `tap_rows` selects exactly the in-range rows `o * stride + offset -
    /// pad` over `o < output`, for every small geometry.
    #[test]
    fn tap_rows_matches_enumeration() {
        for size in 1..7 {
            for stride in 1..4 {
                for pad in 0..4 {
                    for offset in 0..6 {
                        // Every output length a conv can produce here, and
                        // one more (rows past the input must be cut).
                        for output in 1..=(size + 2 * pad) / stride + 1 {
                            let expected: Vec<isize> = (0..output)
                                .map(|o| (o * stride + offset) as isize - pad as isize)
                                .filter(|&r| (0..size as isize).contains(&r))
                                .collect();
                            let got: Vec<isize> = match tap_rows(size, output, offset, stride, pad)
                            {
                                Some(s) => s.into_iter().collect(),
                                None => Vec::new(),
                            };
                            assert_eq!(
                                got, expected,
                                "size {size} output {output} offset {offset} stride {stride} pad {pad}"
                            );
                        }
                    }
                }
            }
        }
    }
}
