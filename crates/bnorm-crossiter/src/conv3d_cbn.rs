use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig3d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv3d_moment_jacobians, Conv3dGeometry};

use crate::conv_block::{check_conv_extent, check_conv_input, check_conv_output, same_padding};
use crate::{CrossIterBatchNorm, CrossIterBatchNormConfig, WeightLayout};

/// Configuration of a [`Conv3dCbn`]: burn's `Conv3dConfig` fields with the
/// same defaults, plus the CBN options in `norm` (its `num_features` is
/// taken from the conv's output channels).
///
/// ```
/// # use bnorm_crossiter::Conv3dCbnConfig;
/// # use burn::nn::PaddingConfig3d;
/// let config = Conv3dCbnConfig::new([16, 32], [3, 3, 3])
///     .with_padding(PaddingConfig3d::Same)
///     .with_bias(false)
///     .with_window(8);
/// assert_eq!(config.norm.window, 8);
/// ```
#[derive(Config, Debug)]
pub struct Conv3dCbnConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// `[kd, kh, kw]`.
    pub kernel_size: [usize; 3],
    /// Default: `[1, 1, 1]`.
    #[config(default = "[1, 1, 1]")]
    pub stride: [usize; 3],
    /// Default: `[1, 1, 1]`.
    #[config(default = "[1, 1, 1]")]
    pub dilation: [usize; 3],
    /// Default: 1.
    #[config(default = "1")]
    pub groups: usize,
    /// Default: valid (no padding), as burn's `Conv3dConfig`. burn's `Same`
    /// takes odd kernels only, and panics when the padding it needs for an
    /// input is not the same on both sides.
    #[config(default = "PaddingConfig3d::Valid")]
    pub padding: PaddingConfig3d,
    /// Conv bias. Default: true, as burn's `Conv3dConfig` (compensated in
    /// the window too; `with_bias(false)` saves a little).
    #[config(default = true)]
    pub bias: bool,
    /// Conv weight initializer. Default: burn's.
    #[config(
        default = "Initializer::KaimingUniform{gain:0.577_350_269_189_625_8,fan_out_only:false}"
    )]
    pub initializer: Initializer,
    /// CBN options (`num_features` is overridden by `channels[1]`).
    #[config(default = "CrossIterBatchNormConfig::new(0)")]
    pub norm: CrossIterBatchNormConfig,
}

impl Conv3dCbnConfig {
    /// Sets the CBN window `k` (current iteration + `k - 1` history entries).
    pub fn with_window(mut self, window: usize) -> Self {
        self.norm.window = window;
        self
    }

    /// Initializes the conv (as burn's `Conv3dConfig::init`) and its CBN.
    ///
    /// # Panics
    ///
    /// As burn's `Conv3dConfig::init` (channels not divisible by groups,
    /// `Same` padding with an even kernel) and
    /// [`CrossIterBatchNormConfig::init`].
    pub fn init(&self, device: &Device) -> Conv3dCbn {
        let conv = Conv3dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        let [kd, kh, kw] = self.kernel_size;
        let layout = WeightLayout {
            groups: self.groups,
            patch_len: self.channels[0] / self.groups * kd * kh * kw,
        };
        let mut norm = self.norm.clone();
        norm.num_features = self.channels[1];
        Conv3dCbn {
            conv,
            norm: norm.init(layout, device),
        }
    }
}

/// A burn `Conv3d` followed by [`CrossIterBatchNorm`]: CBN for volumes
/// (CT, MRI, microscopy stacks), where one sample may be all that fits.
///
/// As [`Conv2dCbn`](crate::Conv2dCbn): the Jacobians of the output moments
/// with respect to the conv weight are computed in closed form from the
/// conv input and output (one extra weight-gradient convolution per
/// training step, see [`bnorm_core::conv3d_jacobian`]), and the history,
/// with everything a resumed run needs, is in the record.
#[derive(Module, Debug)]
pub struct Conv3dCbn {
    /// The convolution.
    pub conv: Conv3d,
    /// The normalization of its output.
    pub norm: CrossIterBatchNorm,
}

impl Conv3dCbn {
    /// `norm(conv(x))`: training or inference as burn's `BatchNorm`.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, depth, height, width]`
    /// - output: `[batch_size, channels_out, depth_out, height_out, width_out]`
    ///
    /// # Panics
    ///
    /// If `input` does not have `channels_in` channels, its spatial axes,
    /// padded, are smaller than the dilated kernel, or `Same` padding
    /// would need more on one side than the other for this input size
    /// (burn's `Conv3d` pads both sides alike). The state is untouched then.
    pub fn forward(&self, input: Tensor<5>) -> Tensor<5> {
        let geometry = self.check_input(&input.dims());
        let y = self.conv.forward(input.clone());
        self.normalize_checked(input, y, geometry)
    }

    /// `norm(y)` for `y = conv(input)` computed by the caller with this
    /// layer's `conv` weight and bias — for a convolution kernel other than
    /// burn's `conv3d` (a faster one for the backend, a fused one). Equal to
    /// [`forward`](Self::forward) when `conv_output` is
    /// `self.conv.forward(input)`.
    ///
    /// `input` is needed because the weight Jacobians of the moments are
    /// computed from the conv's input and output; an output that is not
    /// this conv's would make the compensation wrong.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, depth, height, width]`
    /// - `conv_output`: `[batch_size, channels_out, depth_out, height_out,
    ///   width_out]`, the conv's output size for `input`
    /// - output: as `conv_output`
    ///
    /// # Panics
    ///
    /// As [`forward`](Self::forward), and if `conv_output` is not the conv's
    /// output shape for `input` (the state is untouched then).
    pub fn forward_conv_output(&self, input: Tensor<5>, conv_output: Tensor<5>) -> Tensor<5> {
        let dims = input.dims();
        let geometry = self.check_input(&dims);
        let size = [dims[2], dims[3], dims[4]];
        let [depth, height, width] = geometry.output_size(size, self.conv.kernel_size);
        let expected = [dims[0], self.norm.num_features, depth, height, width];
        check_conv_output("Conv3dCbn", &dims, &conv_output.dims(), expected);
        self.normalize_checked(input, conv_output, geometry)
    }

    /// Checks an input of shape `dims` (see `forward`'s panics) and returns
    /// the conv's geometry for it.
    fn check_input(&self, dims: &[usize; 5]) -> Conv3dGeometry {
        check_conv_input(
            "Conv3dCbn",
            "depth, height, width",
            dims,
            (&self.conv.weight, self.conv.groups),
        );
        let geometry = self.geometry([dims[2], dims[3], dims[4]]);
        check_conv_extent(
            "Conv3dCbn",
            "depth, height, width",
            dims,
            &self.conv.kernel_size,
            &geometry.dilation,
            &geometry.padding.map(|p| [p, p]),
        );
        geometry
    }

    /// The normalization of `y = conv(input)`, both shapes checked;
    /// `geometry` is the conv's for this input size.
    fn normalize_checked(
        &self,
        input: Tensor<5>,
        y: Tensor<5>,
        geometry: Conv3dGeometry,
    ) -> Tensor<5> {
        self.norm.forward_conv(
            input,
            y,
            (&self.conv.weight, &self.conv.bias, self.conv.groups),
            |x, y, weight_dims| conv3d_moment_jacobians(x, y, weight_dims, geometry),
        )
    }

    /// The conv's geometry with its padding resolved for an input of
    /// `size` (depth, height, width) as burn's `Conv3d` resolves it.
    fn geometry(&self, size: [usize; 3]) -> Conv3dGeometry {
        let conv = &self.conv;
        let padding = match &conv.padding {
            PaddingConfig3d::Valid => [0; 3],
            PaddingConfig3d::Same => {
                let pairs =
                    [0, 1, 2].map(|a| same_padding(conv.kernel_size[a], conv.stride[a], size[a]));
                if pairs.iter().any(|[before, after]| before != after) {
                    // burn's `Conv3d` pads both sides of an axis alike.
                    panic!(
                        "Conv3dCbn: `Same` padding for an input of depth, height, width \
                         {size:?} needs [before, after] = {pairs:?}, and burn's Conv3d pads \
                         both sides alike (use odd kernels with stride 1, or explicit padding)"
                    );
                }
                pairs.map(|[before, _]| before)
            }
            PaddingConfig3d::Explicit(depth, height, width) => [*depth, *height, *width],
        };
        Conv3dGeometry {
            stride: conv.stride,
            padding,
            dilation: conv.dilation,
            groups: conv.groups,
        }
    }
}
