//! A convolution's weight gradient as a few matrix products on the input
//! itself, for backends whose own weight-gradient kernel is slow.
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
//! Two routes, the same sums in another order:
//!
//! - **By kernel row** ([`weight_gradient_by_kernel_rows`]), on
//!   burn-flex, for the common geometry (one group, stride 1 along depth
//!   and height, no dilation along the width). The padded input is laid
//!   out channels-last and flat, `X[N, positions * C_in]`. With the output gradient spread
//!   over the same grid of positions (zeros where the grid has no output,
//!   `G[N, C, P]`), the input values that a whole row of `kw` taps reads
//!   at grid position `p` are one contiguous run
//!   `X[base + p * stride_w * C_in ..][.. kw * C_in]`: the runs at
//!   successive positions form a strided *view* `V[P, kw * C_in]` of `X`
//!   (`unfold`, no copy) and
//!
//!   ```text
//!   dW[:, :, row, :] = sum over the batch of  G [C, P] x V_row [P, kw C_in]
//!   ```
//!
//!   is one matrix product per image and kernel row, `kw` times wider than
//!   a tap's. The grid has the padded input's height (and width over the
//!   stride), so it holds a few positions more than the output: their
//!   gradient is zero and they add nothing (but for a non-finite input
//!   value read there, which makes the sum NaN; the state guard drops a
//!   history entry with non-finite values).
//! - **Per tap** ([`weight_gradient_per_tap`]), for every geometry. Tap
//!   `t` of the kernel reads the (padded) input at every output position
//!   shifted by `t * dilation`: a strided slice the size of one input. Per
//!   weight group, its column of the gradient is
//!
//!   ```text
//!   dW[:, :, t] = sum over the batch of  grad [C/G, P] x slice_t [P, C_in/G]
//!   ```
//!
//!   with `P` the output positions, one input-sized copy live at a time
//!   (an im2col matrix would hold all `kd kh kw` at once).
//!
//! Both keep one input-sized copy and the output gradient's values live. On
//! a GPU this would be a launch per kernel row or tap: the layers use it on
//! the CPU backends only.

use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Slice, Tensor};

use crate::backend::{backend, BackendKind};

/// Stride, padding (`[before, after]` per axis), dilation and groups of a
/// 3D convolution (a 2D one has a depth axis of one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapGeometry {
    pub stride: [usize; 3],
    pub padding: [[usize; 2]; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl TapGeometry {
    /// Whether [`weight_gradient_by_kernel_rows`] takes this geometry: one
    /// group, stride 1 along depth and height, no dilation along the width.
    fn reads_kernel_rows_contiguously(&self) -> bool {
        self.groups == 1 && self.stride[0] == 1 && self.stride[1] == 1 && self.dilation[2] == 1
    }
}

/// How a convolution's weight gradient is computed as matrix products on a
/// CPU backend (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProductRoute {
    /// burn-flex: by kernel row where the geometry allows, per tap
    /// otherwise.
    KernelRows,
    /// burn-ndarray: per tap. Its matrix product copies a strided operand
    /// out (here the overlapping runs: an im2col matrix per kernel row),
    /// which costs it more than the copies per tap.
    PerTap,
}

/// The route for a convolution's weight gradient on `device` (with or
/// without autodiff): matrix products on burn's CPU backends, burn-ndarray
/// and burn-flex, which take the weight gradient from burn's generic
/// decomposition into a forward convolution; `None` (the backend's own
/// kernel) elsewhere.
pub(crate) fn product_route(device: &Device) -> Option<ProductRoute> {
    #[allow(unreachable_patterns)]
    match backend(device)? {
        BackendKind::Flex => Some(ProductRoute::KernelRows),
        BackendKind::NdArray => Some(ProductRoute::PerTap),
        _ => None,
    }
}

/// The weight gradient `[C, C_in/G, kd * kh * kw]` of a 3D conv with
/// input `x` `[N, C_in, D, H, W]`, output gradient `grad`
/// `[N, C, D', H', W']` and weight shape `[C, C_in/G, kd, kh, kw]`, by
/// `route` (see the module docs).
pub(crate) fn weight_gradient_by_products(
    x: Tensor<5>,
    grad: Tensor<5>,
    weight_dims: [usize; 5],
    geometry: TapGeometry,
    route: ProductRoute,
) -> Tensor<3> {
    if route == ProductRoute::KernelRows && geometry.reads_kernel_rows_contiguously() {
        weight_gradient_by_kernel_rows(x, grad, weight_dims, geometry)
    } else {
        weight_gradient_per_tap(x, grad, weight_dims, geometry)
    }
}

/// [`weight_gradient_by_products`] as one matrix product per image and
/// kernel row (see the module docs); for geometries that
/// [`TapGeometry::reads_kernel_rows_contiguously`].
fn weight_gradient_by_kernel_rows(
    x: Tensor<5>,
    grad: Tensor<5>,
    [c, cin, kd, kh, kw]: [usize; 5],
    geometry: TapGeometry,
) -> Tensor<3> {
    let TapGeometry {
        stride,
        padding,
        dilation,
        ..
    } = geometry;
    let [n, _, d_out, h_out, w_out] = grad.dims();
    let [_, _, d, h, w] = x.dims();
    let [d_pad, h_pad] = [0, 1].map(|a| [d, h][a] + padding[a][0] + padding[a][1]);
    // The grid's width in positions: the padded width, rounded up to a
    // whole number of strides so that a grid row is one input row.
    let grid_w = (w + padding[2][0] + padding[2][1]).div_ceil(stride[2]);
    let w_pad = grid_w * stride[2];
    // Channels-last and flat: the input values at a position are `cin`
    // consecutive numbers (the padding writes the permuted view out in
    // that order, one copy).
    let x = x
        .permute([0, 2, 3, 4, 1])
        .pad(
            [
                (padding[0][0], padding[0][1]),
                (padding[1][0], padding[1][1]),
                (padding[2][0], w_pad - w - padding[2][0]),
                (0, 0),
            ],
            PadMode::Constant(0.0),
        )
        .reshape([n, d_pad * h_pad * w_pad * cin]);
    // The output gradient on the grid: `h_pad` rows of `grid_w` per depth
    // slice, zero where there is no output, up to the last output (whose
    // runs end at the padded input's last value at the latest).
    let grid = ((d_out - 1) * h_pad + h_out - 1) * grid_w + w_out;
    let full = Slice::new(0, None, 1);
    let grad = grad
        .pad(
            [(0, 0), (0, h_pad - h_out), (0, grid_w - w_out)],
            PadMode::Constant(0.0),
        )
        .reshape([n, c, d_out * h_pad * grid_w])
        .slice([full, full, Slice::new(0, Some(grid as isize), 1)]);
    let step = stride[2] * cin;
    let run = kw * cin;
    let products = (0..kd)
        .flat_map(|i| (0..kh).map(move |j| [i, j]))
        .map(|[i, j]| {
            let first = (i * dilation[0] * h_pad + j * dilation[1]) * w_pad * cin;
            let runs: Tensor<3> = x
                .clone()
                .slice([
                    full,
                    Slice::new(
                        first as isize,
                        Some((first + (grid - 1) * step + run) as isize),
                        1,
                    ),
                ])
                .unfold(1, run, step);
            // [N, C, kw * C_in], summed over the batch.
            let product = grad.clone().matmul(runs);
            crate::shape::sum_axis(product, 0).reshape([c, 1, kw, cin])
        })
        .collect();
    Tensor::cat(products, 1)
        .permute([0, 3, 1, 2])
        .reshape([c, cin, kd * kh * kw])
}

/// [`weight_gradient_by_products`] as one matrix product per kernel tap
/// (see the module docs); for every geometry.
fn weight_gradient_per_tap(
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

#[cfg(test)]
mod tests {
    use super::{
        product_route, weight_gradient_by_kernel_rows, weight_gradient_per_tap, ProductRoute,
        TapGeometry,
    };
    use burn::tensor::{Device, Distribution, Tensor};

    /// The two routes give the same weight gradient (the same sums in
    /// another order) for every kind of geometry the kernel-row route
    /// takes: a 2D conv with a width stride that does not divide the padded
    /// width, asymmetric padding and dilation along the height; a 3D conv
    /// with dilation along the depth; a 1D conv whose stride equals its
    /// kernel.
    fn routes_agree(device: &Device) {
        let cases = [
            (
                [2, 3, 1, 7, 6],
                [4, 3, 1, 3, 2],
                [1, 1, 2],
                [[0, 0], [1, 2], [0, 1]],
                [1, 2, 1],
            ),
            (
                [1, 2, 4, 5, 5],
                [3, 2, 2, 3, 3],
                [1, 1, 1],
                [[1, 0], [1, 1], [2, 0]],
                [2, 1, 1],
            ),
            (
                [3, 4, 1, 1, 9],
                [2, 4, 1, 1, 3],
                [1, 1, 3],
                [[0, 0], [0, 0], [1, 1]],
                [1, 1, 1],
            ),
        ];
        for (input, weight, stride, padding, dilation) in cases {
            let geometry = TapGeometry {
                stride,
                padding,
                dilation,
                groups: 1,
            };
            assert!(geometry.reads_kernel_rows_contiguously());
            let output = [0, 1, 2].map(|a| {
                crate::shape::conv_output_len(
                    input[a + 2],
                    weight[a + 2],
                    stride[a],
                    dilation[a],
                    padding[a],
                )
            });
            let x = Tensor::<5>::random(input, Distribution::Normal(0.0, 1.0), device);
            let grad = Tensor::<5>::random(
                [input[0], weight[0], output[0], output[1], output[2]],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let rows = weight_gradient_by_kernel_rows(x.clone(), grad.clone(), weight, geometry);
            let taps = weight_gradient_per_tap(x, grad, weight, geometry);
            assert_eq!(rows.dims(), taps.dims());
            let rows = rows.to_data().try_to_vec::<f32>().unwrap();
            let taps = taps.to_data().try_to_vec::<f32>().unwrap();
            for (i, (r, t)) in rows.iter().zip(&taps).enumerate() {
                assert!(
                    (r - t).abs() <= 1e-5 * (1.0 + t.abs()),
                    "{input:?} {weight:?}: value {i}: by rows {r}, per tap {t}"
                );
            }
        }
    }

    /// burn-flex takes the kernel rows, burn-ndarray the taps, with and
    /// without autodiff.
    #[test]
    #[allow(deprecated)]
    fn cpu_backends_take_matrix_products() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            assert_eq!(product_route(&device), Some(ProductRoute::KernelRows));
        }
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
            assert_eq!(product_route(&device), Some(ProductRoute::PerTap));
        }
    }

    #[test]
    fn routes_agree_on_flex() {
        routes_agree(&Device::flex());
    }

    #[test]
    #[allow(deprecated)]
    fn routes_agree_on_ndarray() {
        routes_agree(&Device::ndarray());
    }
}
