use burn::config::Config;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig3d};
use burn::tensor::{Device, Tensor};

use bnorm_core::{conv3d_moment_jacobians, Conv3dGeometry};

use crate::conv_block::{conv_cbn_block, same_padding};
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

conv_cbn_block! {
    /// A burn `Conv3d` followed by [`CrossIterBatchNorm`]: CBN for volumes
    /// (CT, MRI, microscopy stacks), where one sample may be all that fits.
    ///
    /// As [`Conv2dCbn`](crate::Conv2dCbn): the Jacobians of the output
    /// moments with respect to the conv weight are computed in closed form
    /// from the conv input and output (one extra weight-gradient
    /// convolution per training step, see [`bnorm_core::conv3d_jacobian`]),
    /// and the history, with everything a resumed run needs, is in the
    /// record.
    Conv3dCbn {
        conv: Conv3d,
        rank: 5,
        conv_fn: "conv3d",
        axes: "depth, height, width",
        input: "[batch_size, channels_in, depth, height, width]",
        output: "[batch_size, channels_out, depth_out, height_out, width_out]",
        panics_also: ", or `Same` padding would need more on one side than the other for \
                      this input size (burn's `Conv3d` pads both sides alike)",
        geometry: Conv3dGeometry,
        jacobians: conv3d_moment_jacobians,
        conv_by_products: bnorm_core::conv3d_by_products,
    }
}

impl Conv3dCbn {
    /// The conv's geometry for an input of shape `dims`, its padding
    /// resolved as burn's `Conv3d` resolves it.
    fn resolve_geometry(&self, dims: &[usize; 5]) -> Conv3dGeometry {
        let conv = &self.conv;
        let size = [dims[2], dims[3], dims[4]];
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

    /// The conv's output shape for an input of shape `dims`.
    fn conv_output_dims(&self, dims: &[usize; 5], geometry: &Conv3dGeometry) -> [usize; 5] {
        let size = [dims[2], dims[3], dims[4]];
        let [depth, height, width] = geometry.output_size(size, self.conv.kernel_size);
        [dims[0], self.norm.num_features, depth, height, width]
    }

    /// Kernel, dilation and `[before, after]` padding per spatial axis.
    fn kernel_extent(
        &self,
        geometry: &Conv3dGeometry,
    ) -> ([usize; 3], [usize; 3], [[usize; 2]; 3]) {
        let padding = geometry.padding.map(|p| [p, p]);
        (self.conv.kernel_size, geometry.dilation, padding)
    }
}
