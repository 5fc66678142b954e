use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Initializer, PaddingConfig1d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv1d_moment_jacobians, Conv1dGeometry};

use crate::conv_block::{check_conv_extent, check_conv_input, check_conv_output, same_padding};
use crate::{CrossIterBatchNorm, CrossIterBatchNormConfig, WeightLayout};

/// Configuration of a [`Conv1dCbn`]: burn's `Conv1dConfig` fields with the
/// same defaults, plus the CBN options in `norm` (its `num_features` is
/// taken from `channels_out`).
///
/// ```
/// # use bnorm_crossiter::Conv1dCbnConfig;
/// # use burn::nn::PaddingConfig1d;
/// let config = Conv1dCbnConfig::new(8, 16, 5)
///     .with_padding(PaddingConfig1d::Same)
///     .with_bias(false)
///     .with_window(8);
/// assert_eq!(config.norm.window, 8);
/// ```
#[derive(Config, Debug)]
pub struct Conv1dCbnConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels (the normalized features).
    pub channels_out: usize,
    /// Kernel length.
    pub kernel_size: usize,
    /// Default: 1.
    #[config(default = "1")]
    pub stride: usize,
    /// Default: 1.
    #[config(default = "1")]
    pub dilation: usize,
    /// Default: 1.
    #[config(default = "1")]
    pub groups: usize,
    /// Default: valid (no padding), as burn's `Conv1dConfig`. burn's `Same`
    /// puts the extra value of an odd total padding at the end.
    #[config(default = "PaddingConfig1d::Valid")]
    pub padding: PaddingConfig1d,
    /// Conv bias. Default: true, as burn's `Conv1dConfig` (compensated in
    /// the window too; `with_bias(false)` saves a little).
    #[config(default = true)]
    pub bias: bool,
    /// Conv weight initializer. Default: burn's.
    #[config(
        default = "Initializer::KaimingUniform{gain:0.577_350_269_189_625_8,fan_out_only:false}"
    )]
    pub initializer: Initializer,
    /// CBN options (`num_features` is overridden by `channels_out`).
    #[config(default = "CrossIterBatchNormConfig::new(0)")]
    pub norm: CrossIterBatchNormConfig,
}

impl Conv1dCbnConfig {
    /// Sets the CBN window `k` (current iteration + `k - 1` history entries).
    pub fn with_window(mut self, window: usize) -> Self {
        self.norm.window = window;
        self
    }

    /// Initializes the conv (as burn's `Conv1dConfig::init`) and its CBN.
    ///
    /// # Panics
    ///
    /// As burn's `Conv1dConfig::init` (channels not divisible by groups)
    /// and [`CrossIterBatchNormConfig::init`].
    pub fn init(&self, device: &Device) -> Conv1dCbn {
        let conv = Conv1dConfig::new(self.channels_in, self.channels_out, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        let layout = WeightLayout {
            groups: self.groups,
            patch_len: self.channels_in / self.groups * self.kernel_size,
        };
        let mut norm = self.norm.clone();
        norm.num_features = self.channels_out;
        Conv1dCbn {
            conv,
            norm: norm.init(layout, device),
        }
    }
}

/// A burn `Conv1d` followed by [`CrossIterBatchNorm`]: CBN for signals and
/// sequences `[N, C, L]`.
///
/// As [`Conv2dCbn`](crate::Conv2dCbn): the Jacobians of the output moments
/// with respect to the conv weight are computed in closed form from the
/// conv input and output (one extra weight-gradient convolution per
/// training step, see [`bnorm_core::conv1d_jacobian`]), and the history,
/// with everything a resumed run needs, is in the record.
#[derive(Module, Debug)]
pub struct Conv1dCbn {
    /// The convolution.
    pub conv: Conv1d,
    /// The normalization of its output.
    pub norm: CrossIterBatchNorm,
}

impl Conv1dCbn {
    /// `norm(conv(x))`: training or inference as burn's `BatchNorm`.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, length]`
    /// - output: `[batch_size, channels_out, length_out]`
    ///
    /// # Panics
    ///
    /// If `input` does not have `channels_in` channels, or its spatial
    /// axes, padded, are smaller than the dilated kernel (the state is
    /// untouched then).
    pub fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        let geometry = self.check_input(&input.dims());
        let y = self.conv.forward(input.clone());
        self.normalize_checked(input, y, geometry)
    }

    /// `norm(y)` for `y = conv(input)` computed by the caller with this
    /// layer's `conv` weight and bias — for a convolution kernel other than
    /// burn's `conv1d` (a faster one for the backend, a fused one). Equal to
    /// [`forward`](Self::forward) when `conv_output` is
    /// `self.conv.forward(input)`.
    ///
    /// `input` is needed because the weight Jacobians of the moments are
    /// computed from the conv's input and output; an output that is not
    /// this conv's would make the compensation wrong.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels_in, length]`
    /// - `conv_output`: `[batch_size, channels_out, length_out]`, the conv's
    ///   output size for `input`
    /// - output: as `conv_output`
    ///
    /// # Panics
    ///
    /// As [`forward`](Self::forward), and if `conv_output` is not the conv's
    /// output shape for `input` (the state is untouched then).
    pub fn forward_conv_output(&self, input: Tensor<3>, conv_output: Tensor<3>) -> Tensor<3> {
        let dims = input.dims();
        let geometry = self.check_input(&dims);
        let length = geometry.output_len(dims[2], self.conv.kernel_size);
        let expected = [dims[0], self.norm.num_features, length];
        check_conv_output("Conv1dCbn", &dims, &conv_output.dims(), expected);
        self.normalize_checked(input, conv_output, geometry)
    }

    /// Checks an input of shape `dims` (see `forward`'s panics) and returns
    /// the conv's geometry for it.
    fn check_input(&self, dims: &[usize; 3]) -> Conv1dGeometry {
        check_conv_input(
            "Conv1dCbn",
            "length",
            dims,
            (&self.conv.weight, self.conv.groups),
        );
        let geometry = self.geometry(dims[2]);
        check_conv_extent(
            "Conv1dCbn",
            "length",
            dims,
            &[self.conv.kernel_size],
            &[geometry.dilation],
            &[geometry.padding],
        );
        geometry
    }

    /// The normalization of `y = conv(input)`, both shapes checked;
    /// `geometry` is the conv's for this input size.
    fn normalize_checked(
        &self,
        input: Tensor<3>,
        y: Tensor<3>,
        geometry: Conv1dGeometry,
    ) -> Tensor<3> {
        self.norm.forward_conv(
            input,
            y,
            (&self.conv.weight, &self.conv.bias, self.conv.groups),
            |x, y, weight_dims| conv1d_moment_jacobians(x, y, weight_dims, geometry),
        )
    }

    /// The conv's geometry with its padding resolved for an input of
    /// `length` as burn's `Conv1d` resolves it.
    fn geometry(&self, length: usize) -> Conv1dGeometry {
        let conv = &self.conv;
        let padding = match &conv.padding {
            PaddingConfig1d::Valid => [0, 0],
            PaddingConfig1d::Same => same_padding(conv.kernel_size, conv.stride, length),
            PaddingConfig1d::Explicit(left, right) => [*left, *right],
        };
        Conv1dGeometry {
            stride: conv.stride,
            padding,
            dilation: conv.dilation,
            groups: conv.groups,
        }
    }
}
