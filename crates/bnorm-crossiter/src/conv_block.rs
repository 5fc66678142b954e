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
    let reach = || kernel.iter().zip(dilation).map(|(k, d)| d * (k - 1) + 1);
    let fits = spatial
        .iter()
        .zip(reach())
        .zip(padding)
        .all(|((size, reach), [before, after])| size + before + after >= reach);
    if !fits {
        let reach: Vec<usize> = reach().collect();
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

/// The struct of a conv block of one rank and its `forward` and
/// `forward_conv_output`, written once for [`Conv1dCbn`](crate::Conv1dCbn),
/// [`Conv2dCbn`](crate::Conv2dCbn) and [`Conv3dCbn`](crate::Conv3dCbn) so
/// their code and docs cannot drift. Each block's file supplies its config
/// and three private methods: `resolve_geometry(&dims)` (the conv's
/// geometry for an input shape, padding resolved as burn resolves it),
/// `conv_output_dims(&dims, &geometry)` and `kernel_extent(&geometry)`
/// (kernel, dilation and `[before, after]` padding per spatial axis, as
/// arrays: the check runs every step and allocates nothing).
macro_rules! conv_cbn_block {
    (
        $(#[$struct_doc:meta])*
        $Block:ident {
            conv: $Conv:ident,
            rank: $D:literal,
            conv_fn: $conv_fn:literal,
            axes: $axes:literal,
            input: $input:literal,
            output: $output:literal,
            panics_also: $panics_also:literal,
            geometry: $Geometry:ty,
            jacobians: $jacobians:path,
            conv_by_products: $conv_by_products:path $(,)?
        }
    ) => {
        $(#[$struct_doc])*
        #[derive(burn::module::Module, Debug)]
        pub struct $Block {
            /// The convolution.
            pub conv: $Conv,
            /// The normalization of its output.
            pub norm: CrossIterBatchNorm,
        }

        impl $Block {
            /// `norm(conv(x))`: training or inference as burn's `BatchNorm`.
            ///
            /// # Shapes
            ///
            #[doc = concat!("- `input`: `", $input, "`")]
            #[doc = concat!("- output: `", $output, "`")]
            ///
            /// # Panics
            ///
            #[doc = concat!(
                "If `input` does not have `channels_in` channels, or its spatial axes, \
                 padded, are smaller than the dilated kernel",
                $panics_also,
                ". The state is untouched then."
            )]
            pub fn forward(&self, input: Tensor<$D>) -> Tensor<$D> {
                let geometry = self.check_input(&input.dims());
                let y = self.conv_with(input.clone(), geometry);
                self.normalize_checked(input, y, geometry)
            }

            /// The convolution of `input` as [`forward`](Self::forward)
            #[doc = concat!("computes it: burn's `", $conv_fn, "` with this layer's weight and bias;")]
            /// on burn-flex and burn-ndarray with autodiff, the weight's
            /// gradient by the matrix products the block takes `Q` from
            /// (those backends' own weight gradient is burn's generic
            /// one, slower there), equal to burn's up to the order of the
            /// sums.
            ///
            /// # Shapes
            ///
            #[doc = concat!("- `input`: `", $input, "`")]
            #[doc = concat!("- output: `", $output, "`")]
            ///
            /// # Panics
            ///
            /// As [`forward`](Self::forward).
            pub fn conv_forward(&self, input: Tensor<$D>) -> Tensor<$D> {
                let geometry = self.check_input(&input.dims());
                self.conv_with(input, geometry)
            }

            /// [`conv_forward`](Self::conv_forward) for a checked input.
            fn conv_with(&self, input: Tensor<$D>, geometry: $Geometry) -> Tensor<$D> {
                $conv_by_products(
                    input,
                    self.conv.weight.val(),
                    self.conv.bias.as_ref().map(|b| b.val()),
                    geometry,
                )
            }

            /// `norm(y)` for `y = conv(input)` computed by the caller with
            /// this layer's `conv` weight and bias — for a convolution
            #[doc = concat!("kernel other than burn's `", $conv_fn, "` (a faster one for the")]
            /// backend, a fused one). Equal to [`forward`](Self::forward)
            /// when `conv_output` is [`self.conv_forward(input)`](Self::conv_forward)
            /// (with `self.conv.forward(input)`, up to the order of the
            /// sums in the conv's weight gradient).
            ///
            /// `input` is needed because the weight Jacobians of the
            /// moments are computed from the conv's input and output; an
            /// output that is not this conv's would make the compensation
            /// wrong.
            ///
            /// # Shapes
            ///
            #[doc = concat!("- `input`: `", $input, "`")]
            #[doc = concat!("- `conv_output`: `", $output, "`, the conv's output size for `input`")]
            /// - output: as `conv_output`
            ///
            /// # Panics
            ///
            /// As [`forward`](Self::forward), and if `conv_output` is not
            /// the conv's output shape for `input` (the state is untouched
            /// then).
            pub fn forward_conv_output(
                &self,
                input: Tensor<$D>,
                conv_output: Tensor<$D>,
            ) -> Tensor<$D> {
                let dims = input.dims();
                let geometry = self.check_input(&dims);
                let expected = self.conv_output_dims(&dims, &geometry);
                $crate::conv_block::check_conv_output(
                    stringify!($Block),
                    &dims,
                    &conv_output.dims(),
                    expected,
                );
                self.normalize_checked(input, conv_output, geometry)
            }

            /// Checks an input of shape `dims` (see `forward`'s panics) and
            /// returns the conv's geometry for it.
            fn check_input(&self, dims: &[usize; $D]) -> $Geometry {
                $crate::conv_block::check_conv_input(
                    stringify!($Block),
                    $axes,
                    dims,
                    (&self.conv.weight, self.conv.groups),
                );
                let geometry = self.resolve_geometry(dims);
                let (kernel, dilation, padding) = self.kernel_extent(&geometry);
                $crate::conv_block::check_conv_extent(
                    stringify!($Block),
                    $axes,
                    dims,
                    &kernel,
                    &dilation,
                    &padding,
                );
                geometry
            }

            /// The normalization of `y = conv(input)`, both shapes checked;
            /// `geometry` is the conv's for this input size.
            fn normalize_checked(
                &self,
                input: Tensor<$D>,
                y: Tensor<$D>,
                geometry: $Geometry,
            ) -> Tensor<$D> {
                self.norm.forward_conv(
                    input,
                    y,
                    (&self.conv.weight, &self.conv.bias, self.conv.groups),
                    |x, y, weight_dims| $jacobians(x, y, weight_dims, geometry),
                )
            }
        }
    };
}
pub(crate) use conv_cbn_block;
