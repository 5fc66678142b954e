//! Convolutions whose weight gradient comes from matrix products on the
//! input (`tap_products`) on burn's CPU backends.
//!
//! burn-ndarray and burn-flex take a convolution's weight gradient from
//! burn's generic decomposition into a forward convolution with the output
//! gradient as the kernel, a shape their convolutions are slow at (see
//! `tap_products`). CBN's blocks already compute the same kind of sum for
//! `Q` (`d nu / dW` is the weight gradient of `2y/M`) by matrix products;
//! here the block's own convolution takes its weight gradient the same way:
//!
//! ```text
//! forward:   y = conv(x, W untracked, b)        burn's kernel; x and b keep burn's backward
//!            out = y,  one more node with parents y and W
//! backward:  dy = dout,  dW = weight_gradient_by_products(x, dout)
//! ```
//!
//! The values are burn's convolution's; the gradients equal burn's up to
//! the order of the sums. One difference: where the kernel-row route reads
//! input values no output reads (the last columns of a strided
//! convolution), a non-finite value there makes the weight gradient
//! non-finite, where burn's leaves it finite.
//!
//! Elsewhere (a GPU backend, no autodiff, a weight that takes no gradient)
//! the functions are burn's convolutions.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{
    Autodiff, Backend, DispatchKindConversion, DispatchTensor, GradientCheckpointingStrategy,
};
use burn::tensor::module::{conv1d, conv2d, conv3d};
use burn::tensor::Tensor;

use crate::closed_form::{graph_primitive, on_autodiff_backend, register_grad, tensor};
use crate::tap_products::{product_route, weight_gradient_by_products, ProductRoute, TapGeometry};
use crate::{Conv1dGeometry, Conv2dGeometry, Conv3dGeometry};

/// burn's `conv1d(x, weight, bias)` with the `geometry`'s options; on
/// burn-ndarray and burn-flex with autodiff, `weight`'s gradient by matrix
/// products (see the module docs).
///
/// # Shapes
///
/// - `x`: `[N, C_in, L]`, `weight`: `[C, C_in / G, k]`, `bias`: `[C]`
/// - output: `[N, C, L']`
pub fn conv1d_by_products(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    geometry: Conv1dGeometry,
) -> Tensor<3> {
    by_products(
        x,
        weight,
        bias,
        (geometry.options(), geometry.taps()),
        conv1d,
    )
}

/// burn's `conv2d(x, weight, bias)` with the `geometry`'s options; on
/// burn-ndarray and burn-flex with autodiff, `weight`'s gradient by matrix
/// products (see the module docs).
///
/// # Shapes
///
/// - `x`: `[N, C_in, H, W]`, `weight`: `[C, C_in / G, kh, kw]`, `bias`: `[C]`
/// - output: `[N, C, H', W']`
pub fn conv2d_by_products(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    geometry: Conv2dGeometry,
) -> Tensor<4> {
    by_products(
        x,
        weight,
        bias,
        (geometry.options(), geometry.taps()),
        conv2d,
    )
}

/// burn's `conv3d(x, weight, bias)` with the `geometry`'s options; on
/// burn-ndarray and burn-flex with autodiff, `weight`'s gradient by matrix
/// products (see the module docs).
///
/// # Shapes
///
/// - `x`: `[N, C_in, D, H, W]`, `weight`: `[C, C_in / G, kd, kh, kw]`,
///   `bias`: `[C]`
/// - output: `[N, C, D', H', W']`
pub fn conv3d_by_products(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    geometry: Conv3dGeometry,
) -> Tensor<5> {
    by_products(
        x,
        weight,
        bias,
        (geometry.options(), geometry.taps()),
        conv3d,
    )
}

/// `conv(x, weight, bias, options)`, with `weight`'s gradient by products
/// with `taps` where [`products_for`] finds a route.
fn by_products<const D: usize, O>(
    x: Tensor<D>,
    weight: Tensor<D>,
    bias: Option<Tensor<1>>,
    (options, taps): (O, TapGeometry),
    conv: fn(Tensor<D>, Tensor<D>, Option<Tensor<1>>, O) -> Tensor<D>,
) -> Tensor<D> {
    match products_for(&x, &weight) {
        Some(route) => {
            let y = conv(x.clone(), untracked(weight.clone()), bias, options);
            with_product_gradient(y, weight, x, taps, route)
        }
        None => conv(x, weight, bias, options),
    }
}

/// `weight`'s values without a gradient: burn's `detach` keeps a leaf's
/// `require_grad`, and the convolution would then still compute a weight
/// gradient (for a detached copy nobody reads).
fn untracked<const D: usize>(weight: Tensor<D>) -> Tensor<D> {
    weight.set_require_grad(false)
}

/// The product route when `weight` takes a gradient on an autodiff device
/// of a backend that has one.
fn products_for<const D: usize>(x: &Tensor<D>, weight: &Tensor<D>) -> Option<ProductRoute> {
    weight.gradient_checkpointing_strategy()?;
    if !weight.is_tracked() {
        return None;
    }
    product_route(&x.device())
}

/// `y` with one more autodiff node whose backward pass passes the gradient
/// on to `y` and gives `weight` the weight gradient of a convolution of `x`
/// with `geometry` by `route`.
fn with_product_gradient<const D: usize>(
    y: Tensor<D>,
    weight: Tensor<D>,
    x: Tensor<D>,
    geometry: TapGeometry,
    route: ProductRoute,
) -> Tensor<D> {
    let strategy = y
        .gradient_checkpointing_strategy()
        .expect("an autodiff device");
    // The route names the backend (`product_route`): only burn's CPU
    // backends are instantiated here, not burn-cubecl's.
    #[allow(deprecated)]
    match route {
        ProductRoute::PerTap => on_autodiff_backend!(
            @strategy burn::backend::NdArray, strategy, on_backend, [D],
            (y, weight, x, geometry, route, strategy)
        ),
        ProductRoute::KernelRows => on_autodiff_backend!(
            @strategy burn::backend::Flex, strategy, on_backend, [D],
            (y, weight, x, geometry, route, strategy)
        ),
    }
}

fn on_backend<B: Backend, C: CheckpointStrategy, const D: usize>(
    y: Tensor<D>,
    weight: Tensor<D>,
    x: Tensor<D>,
    geometry: TapGeometry,
    route: ProductRoute,
    strategy: GradientCheckpointingStrategy,
) -> Tensor<D>
where
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    let weight_dims = weight.dims();
    let y = graph_primitive::<B, C, D>(y, strategy);
    let weight = graph_primitive::<B, C, D>(weight, strategy);
    let output = y.primitive().clone();
    let parents = [y.node(), weight.node()];
    let output = match ProductGradient::<D>
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = SavedInput {
                x: x.inner(),
                weight_dims,
                geometry,
                route,
            };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive::<Autodiff<B, C>>(output)
}

/// The backward pass of [`with_product_gradient`]'s node.
#[derive(Debug)]
struct ProductGradient<const D: usize>;

/// What it keeps: the convolution's input (without autodiff; burn's
/// convolution keeps it too) and its geometry.
#[derive(Debug, Clone)]
struct SavedInput<const D: usize> {
    x: Tensor<D>,
    weight_dims: [usize; D],
    geometry: TapGeometry,
    route: ProductRoute,
}

impl<B: Backend, const D: usize> Backward<B, 2> for ProductGradient<D>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = SavedInput<D>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad: Tensor<D> = tensor::<B, D>(grads.consume::<B>(&ops.node));
        let [y_node, weight_node] = ops.parents.map(|parent| parent.map(|node| node.id));
        let saved = ops.state;
        if weight_node.is_some() {
            let weight_grad = weight_gradient_by_products(
                volume(saved.x),
                volume(grad.clone()),
                volume_dims(saved.weight_dims),
                saved.geometry,
                saved.route,
            )
            .reshape(saved.weight_dims);
            register_grad::<B, D>(grads, weight_node, weight_grad);
        }
        register_grad::<B, D>(grads, y_node, grad);
    }
}

/// A 1D, 2D or 3D convolution's `[N, C, ...]` tensor as a 3D one's, the
/// missing leading spatial axes of size one.
fn volume<const D: usize>(t: Tensor<D>) -> Tensor<5> {
    let dims = volume_dims(t.dims());
    t.reshape(dims)
}

/// `dims` `[N, C, ...]` with size-one spatial axes in front up to three.
fn volume_dims<const D: usize>(dims: [usize; D]) -> [usize; 5] {
    let mut volume = [1; 5];
    volume[..2].copy_from_slice(&dims[..2]);
    volume[5 - (D - 2)..].copy_from_slice(&dims[2..]);
    volume
}

#[cfg(test)]
mod tests {
    use super::{conv1d_by_products, conv2d_by_products, conv3d_by_products, volume_dims};
    use crate::{Conv1dGeometry, Conv2dGeometry, Conv3dGeometry};
    use burn::tensor::module::{conv1d, conv2d, conv3d};
    use burn::tensor::{Device, Distribution, Tensor};

    #[test]
    fn spatial_axes_go_last() {
        assert_eq!(volume_dims([2, 3, 7]), [2, 3, 1, 1, 7]);
        assert_eq!(volume_dims([2, 3, 6, 7]), [2, 3, 1, 6, 7]);
        assert_eq!(volume_dims([2, 3, 5, 6, 7]), [2, 3, 5, 6, 7]);
    }

    /// Output and gradients (input, weight, bias) of `sum(conv(x, w, b) *
    /// probe)` through `conv`, for leaves made from the values given.
    fn run<const D: usize>(
        conv: impl FnOnce(Tensor<D>, Tensor<D>, Option<Tensor<1>>) -> Tensor<D>,
        [x, weight, bias, probe]: [Tensor<D>; 4],
        bias_len: usize,
        weight_tracked: bool,
    ) -> [Vec<f32>; 4] {
        let leaf = |t: Tensor<D>| t.detach().require_grad();
        let (x, bias) = (leaf(x), leaf(bias).reshape([bias_len]));
        let weight = match weight_tracked {
            true => leaf(weight),
            false => weight.detach(),
        };
        let output = conv(x.clone(), weight.clone(), Some(bias.clone()));
        let grads = output.clone().mul(probe).sum().backward();
        let values = |t: Option<Vec<f32>>| t.unwrap_or_default();
        let flat = |t: Tensor<D>| t.into_data().try_to_vec::<f32>().unwrap();
        [
            flat(output),
            values(x.grad(&grads).map(flat)),
            values(weight.grad(&grads).map(flat)),
            values(
                bias.grad(&grads)
                    .map(|g| g.into_data().try_to_vec::<f32>().unwrap()),
            ),
        ]
    }

    /// `by_products` and burn's `conv` give the same output bit for bit and
    /// the same gradients up to the order of the sums; a weight without
    /// gradient takes burn's route.
    fn compare<const D: usize>(
        name: &str,
        device: &Device,
        [x_dims, weight_dims, out_dims]: [[usize; D]; 3],
        by_products: impl Fn(Tensor<D>, Tensor<D>, Option<Tensor<1>>) -> Tensor<D>,
        conv: impl Fn(Tensor<D>, Tensor<D>, Option<Tensor<1>>) -> Tensor<D>,
    ) {
        let normal =
            |dims: [usize; D]| Tensor::<D>::random(dims, Distribution::Normal(0.0, 1.0), device);
        let mut bias_dims = [1; D];
        bias_dims[0] = weight_dims[0];
        let leaves = [
            normal(x_dims),
            normal(weight_dims),
            normal(bias_dims),
            normal(out_dims),
        ];
        for weight_tracked in [true, false] {
            let ours = run(&by_products, leaves.clone(), weight_dims[0], weight_tracked);
            let burns = run(&conv, leaves.clone(), weight_dims[0], weight_tracked);
            assert_eq!(
                ours[2].is_empty(),
                !weight_tracked,
                "{name}: weight gradient"
            );
            for (part, (a, b)) in ["output", "x", "weight", "bias"]
                .iter()
                .zip(ours.iter().zip(&burns))
            {
                assert_eq!(a.len(), b.len(), "{name} {part}");
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    if *part == "weight" {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{name}: weight gradient {i}: by products {a}, burn {b}"
                        );
                    } else {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{name}: {part} {i}: {a} against {b}"
                        );
                    }
                }
            }
        }
    }

    /// Geometries that take the kernel-row route on burn-flex (a width
    /// stride that does not divide the padded width, asymmetric padding,
    /// dilation along the height) and the per-tap route (groups, a height
    /// stride), in 1D, 2D and 3D.
    fn by_products_matches_burn(device: &Device) {
        let cases_2d = [
            Conv2dGeometry {
                stride: [1, 2],
                padding: [[1, 2], [0, 1]],
                dilation: [2, 1],
                groups: 1,
            },
            Conv2dGeometry {
                stride: [2, 1],
                padding: [[1, 1], [1, 1]],
                dilation: [1, 1],
                groups: 2,
            },
        ];
        for geometry in cases_2d {
            let [x, w] = [[2, 4, 7, 6], [6, 4 / geometry.groups, 3, 2]];
            let [h, wd] = geometry.output_size([x[2], x[3]], [w[2], w[3]]);
            compare(
                &format!("2D {geometry:?}"),
                device,
                [x, w, [2, 6, h, wd]],
                |x, w, b| conv2d_by_products(x, w, b, geometry),
                |x, w, b| conv2d(x, w, b, geometry.options()),
            );
        }
        let geometry = Conv1dGeometry {
            stride: 2,
            padding: [2, 1],
            dilation: 1,
            groups: 1,
        };
        let length = geometry.output_len(9, 3);
        compare(
            "1D",
            device,
            [[3, 2, 9], [4, 2, 3], [3, 4, length]],
            |x, w, b| conv1d_by_products(x, w, b, geometry),
            |x, w, b| conv1d(x, w, b, geometry.options()),
        );
        let geometry = Conv3dGeometry {
            stride: [1, 1, 1],
            padding: [1, 0, 1],
            dilation: [2, 1, 1],
            groups: 1,
        };
        let [d, h, w] = geometry.output_size([5, 4, 4], [2, 3, 3]);
        compare(
            "3D",
            device,
            [[2, 3, 5, 4, 4], [2, 3, 2, 3, 3], [2, 2, d, h, w]],
            |x, w, b| conv3d_by_products(x, w, b, geometry),
            |x, w, b| conv3d(x, w, b, geometry.options()),
        );
    }

    #[test]
    fn by_products_matches_burn_flex() {
        by_products_matches_burn(&Device::flex().autodiff());
    }

    #[test]
    fn by_products_matches_burn_flex_balanced_checkpointing() {
        by_products_matches_burn(&Device::flex().autodiff().gradient_checkpointing());
    }

    #[test]
    #[allow(deprecated)]
    fn by_products_matches_burn_ndarray() {
        by_products_matches_burn(&Device::ndarray().autodiff());
    }
}
