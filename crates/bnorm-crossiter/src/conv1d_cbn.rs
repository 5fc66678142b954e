use burn::config::Config;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Initializer, PaddingConfig1d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv1d_moment_jacobians, Conv1dGeometry};

use crate::conv_block::{conv_cbn_block, same_padding};
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

conv_cbn_block! {
    /// A burn `Conv1d` followed by [`CrossIterBatchNorm`]: CBN for signals
    /// and sequences `[N, C, L]`.
    ///
    /// As [`Conv2dCbn`](crate::Conv2dCbn): the Jacobians of the output
    /// moments with respect to the conv weight are computed in closed form
    /// from the conv input and output (one extra weight-gradient
    /// convolution per training step, see [`bnorm_core::conv1d_jacobian`]),
    /// and the history, with everything a resumed run needs, is in the
    /// record.
    Conv1dCbn {
        conv: Conv1d,
        rank: 3,
        conv_fn: "conv1d",
        axes: "length",
        input: "[batch_size, channels_in, length]",
        output: "[batch_size, channels_out, length_out]",
        panics_also: "",
        geometry: Conv1dGeometry,
        jacobians: conv1d_moment_jacobians,
        conv_by_products: bnorm_core::conv1d_by_products,
    }
}

impl Conv1dCbn {
    /// The conv's geometry for an input of shape `dims`, its padding
    /// resolved as burn's `Conv1d` resolves it (`Same`: the extra value of
    /// an odd total goes to the end).
    fn resolve_geometry(&self, dims: &[usize; 3]) -> Conv1dGeometry {
        let conv = &self.conv;
        let padding = match &conv.padding {
            PaddingConfig1d::Valid => [0, 0],
            PaddingConfig1d::Same => same_padding(conv.kernel_size, conv.stride, dims[2]),
            PaddingConfig1d::Explicit(left, right) => [*left, *right],
        };
        Conv1dGeometry {
            stride: conv.stride,
            padding,
            dilation: conv.dilation,
            groups: conv.groups,
        }
    }

    /// The conv's output shape for an input of shape `dims`.
    fn conv_output_dims(&self, dims: &[usize; 3], geometry: &Conv1dGeometry) -> [usize; 3] {
        let length = geometry.output_len(dims[2], self.conv.kernel_size);
        [dims[0], self.norm.num_features, length]
    }

    /// Kernel, dilation and `[before, after]` padding of the one spatial
    /// axis.
    fn kernel_extent(
        &self,
        geometry: &Conv1dGeometry,
    ) -> ([usize; 1], [usize; 1], [[usize; 2]; 1]) {
        (
            [self.conv.kernel_size],
            [geometry.dilation],
            [geometry.padding],
        )
    }
}
