use burn::config::Config;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv2d_moment_jacobians, Conv2dGeometry};

use crate::conv_block::{conv_cbn_block, same_padding};
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

conv_cbn_block! {
    /// A burn `Conv2d` followed by [`CrossIterBatchNorm`].
    ///
    /// The Jacobians of the output moments with respect to the conv weight
    /// are computed in closed form from the conv input and output (one extra
    /// weight-gradient convolution per training step, no second backward
    /// pass), and the history, with everything a resumed run needs, is in
    /// the record.
    Conv2dCbn {
        conv: Conv2d,
        rank: 4,
        conv_fn: "conv2d",
        axes: "height, width",
        input: "[batch_size, channels_in, height, width]",
        output: "[batch_size, channels_out, height_out, width_out]",
        panics_also: "",
        geometry: Conv2dGeometry,
        jacobians: conv2d_moment_jacobians,
        conv_by_products: bnorm_core::conv2d_by_products,
    }
}

impl Conv2dCbn {
    /// The conv's geometry for an input of shape `dims`, its padding
    /// resolved as burn's `Conv2d` resolves it (`Same`: the extra pixel of
    /// an odd total goes to the end).
    fn resolve_geometry(&self, dims: &[usize; 4]) -> Conv2dGeometry {
        let [kh, kw] = self.conv.kernel_size;
        let padding = match &self.conv.padding {
            PaddingConfig2d::Valid => [[0, 0], [0, 0]],
            PaddingConfig2d::Same => [
                same_padding(kh, self.conv.stride[0], dims[2]),
                same_padding(kw, self.conv.stride[1], dims[3]),
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

    /// The conv's output shape for an input of shape `dims`.
    fn conv_output_dims(&self, dims: &[usize; 4], geometry: &Conv2dGeometry) -> [usize; 4] {
        let [height, width] = geometry.output_size([dims[2], dims[3]], self.conv.kernel_size);
        [dims[0], self.norm.num_features, height, width]
    }

    /// Kernel, dilation and `[before, after]` padding per spatial axis.
    fn kernel_extent(
        &self,
        geometry: &Conv2dGeometry,
    ) -> ([usize; 2], [usize; 2], [[usize; 2]; 2]) {
        (self.conv.kernel_size, geometry.dilation, geometry.padding)
    }
}
