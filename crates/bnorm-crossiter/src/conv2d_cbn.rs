use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv2d_moment_jacobians, Conv2dGeometry};

use crate::conv_block::{check_conv_extent, check_conv_input, check_conv_output, same_padding};
use crate::{CrossIterBatchNorm, CrossIterBatchNormConfig, WeightLayout};

/// Configuration of a [`Conv2dCbn`]: burn's `Conv2dConfig` fields with the
/// same defaults, plus the CBN options in `norm` (its `num_features` is
/// taken from the conv's output channels).
///
/// ```
/// # use bnorm_crossiter::Conv2dCbnConfig;
/// # use burn::nn::PaddingConfig2d;
/// let config = Conv2dCbnConfig::new([64, 64], [3, 3])
///     .with_padding(PaddingConfig2d::Same)
///     .with_bias(false)
///     .with_window(8);
/// assert_eq!(config.norm.window, 8);
/// ```
#[derive(Config, Debug)]
pub struct Conv2dCbnConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Default: `[1, 1]`.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Default: `[1, 1]`.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Default: 1.
    #[config(default = "1")]
    pub groups: usize,
    /// Default: valid (no padding), as burn's `Conv2dConfig`.
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// Conv bias. Default: true, as burn's `Conv2dConfig` (the bias is
    /// compensated in the window too; with a normalization after it, it is
    /// usually redundant: `with_bias(false)` saves a little).
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

impl Conv2dCbnConfig {
    /// Sets the CBN window `k` (current iteration + `k - 1` history entries).
    pub fn with_window(mut self, window: usize) -> Self {
        self.norm.window = window;
        self
    }

    /// Initializes the conv (as burn's `Conv2dConfig::init`) and its CBN.
    ///
    /// # Panics
    ///
    /// As burn's `Conv2dConfig::init` (channels not divisible by groups) and
    /// [`CrossIterBatchNormConfig::init`].
    pub fn init(&self, device: &Device) -> Conv2dCbn {
        let conv = Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        let layout = WeightLayout {
            groups: self.groups,
            patch_len: self.channels[0] / self.groups * self.kernel_size[0] * self.kernel_size[1],
        };
        let mut norm = self.norm.clone();
        norm.num_features = self.channels[1];
        Conv2dCbn {
            conv,
            norm: norm.init(layout, device),
        }
    }
}

/// A burn `Conv2d` followed by [`CrossIterBatchNorm`].
///
/// The Jacobians of the output moments with respect to the conv weight are
/// computed in closed form from the conv input and output (one extra
/// weight-gradient convolution per training step, no second backward pass).
#[derive(Module, Debug)]
pub struct Conv2dCbn {
    /// The convolution.
    pub conv: Conv2d,
    /// The normalization of its output.
    pub norm: CrossIterBatchNorm,
}

impl Conv2dCbn {
    /// `norm(conv(x))`: training or inference as burn's `BatchNorm`.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height_out, width_out]`
    ///
    /// # Panics
    ///
    /// If `input` does not have `channels_in` channels, or its spatial
    /// axes, padded, are smaller than the dilated kernel (the state is
    /// untouched then).
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let geometry = self.check_input(&input.dims());
        let y = self.conv.forward(input.clone());
        self.normalize_checked(input, y, geometry)
    }

    /// `norm(y)` for `y = conv(input)` computed by the caller with this
    /// layer's `conv` weight and bias — for a convolution kernel other than
    /// burn's `conv2d` (a faster one for the backend, a fused one). Equal to
    /// [`forward`](Self::forward) when `conv_output` is
    /// `self.conv.forward(input)`.
    ///
    /// `input` is needed because the weight Jacobians of the moments are
    /// computed from the conv's input and output; an output that is not
    /// this conv's would make the compensation wrong.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - `conv_output`: `[batch_size, channels_out, height_out, width_out]`,
    ///   the conv's output size for `input`
    /// - output: as `conv_output`
    ///
    /// # Panics
    ///
    /// As [`forward`](Self::forward), and if `conv_output` is not the conv's
    /// output shape for `input` (the state is untouched then).
    pub fn forward_conv_output(&self, input: Tensor<4>, conv_output: Tensor<4>) -> Tensor<4> {
        let dims = input.dims();
        let geometry = self.check_input(&dims);
        let [height, width] = geometry.output_size([dims[2], dims[3]], self.conv.kernel_size);
        let expected = [dims[0], self.norm.num_features, height, width];
        check_conv_output("Conv2dCbn", &dims, &conv_output.dims(), expected);
        self.normalize_checked(input, conv_output, geometry)
    }

    /// Checks an input of shape `dims` (see `forward`'s panics) and returns
    /// the conv's geometry for it.
    fn check_input(&self, dims: &[usize; 4]) -> Conv2dGeometry {
        check_conv_input(
            "Conv2dCbn",
            "height, width",
            dims,
            (&self.conv.weight, self.conv.groups),
        );
        let geometry = self.geometry(dims[2], dims[3]);
        check_conv_extent(
            "Conv2dCbn",
            "height, width",
            dims,
            &self.conv.kernel_size,
            &geometry.dilation,
            &geometry.padding,
        );
        geometry
    }

    /// The normalization of `y = conv(input)`, both shapes checked;
    /// `geometry` is the conv's for this input size.
    fn normalize_checked(
        &self,
        input: Tensor<4>,
        y: Tensor<4>,
        geometry: Conv2dGeometry,
    ) -> Tensor<4> {
        self.norm.forward_conv(
            input,
            y,
            (&self.conv.weight, &self.conv.bias, self.conv.groups),
            |x, y, weight_dims| conv2d_moment_jacobians(x, y, weight_dims, geometry),
        )
    }

    /// The conv's geometry with its padding resolved for an input of
    /// `height x width` (burn's rule for `Same`: the extra pixel of an odd
    /// total goes to the end).
    fn geometry(&self, height: usize, width: usize) -> Conv2dGeometry {
        let [kh, kw] = self.conv.kernel_size;
        let padding = match &self.conv.padding {
            PaddingConfig2d::Valid => [[0, 0], [0, 0]],
            PaddingConfig2d::Same => [
                same_padding(kh, self.conv.stride[0], height),
                same_padding(kw, self.conv.stride[1], width),
            ],
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                [[*top, *bottom], [*left, *right]]
            }
        };
        Conv2dGeometry {
            stride: self.conv.stride,
            padding,
            dilation: self.conv.dilation,
            groups: self.conv.groups,
        }
    }
}
