use bnorm_core::AveragedState;
use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d, Conv3d};
use burn::nn::{BatchNorm, Linear};

use bnorm_core::{check_record_shape, InferenceAffine, RecordShapeError};

use crate::{
    Conv1dCbn, Conv2dCbn, Conv3dCbn, CrossIterBatchNorm, CrossIterBatchNormConfig, LinearCbn,
    WeightLayout,
};

impl CrossIterBatchNorm {
    /// The inference-mode transform as `x * scale + shift` per channel,
    /// from the running statistics with every pending update in (a read
    /// that merges nothing: see `AveragedState::value`).
    pub fn inference_affine(&self) -> InferenceAffine {
        InferenceAffine::new(
            self.running_mean.value(),
            self.eps_placement
                .std(self.running_var.value(), self.epsilon),
            self.gamma.as_ref().map(|g| g.val()),
            self.beta.as_ref().map(|b| b.val()),
        )
    }

    /// A CBN continuing a burn `BatchNorm` after a layer with `layout`:
    /// gamma, beta and the running mean are copied; the running variance is
    /// chosen so that this layer's inference std (with its own epsilon and
    /// eps placement) equals the BatchNorm's `sqrt(var + bn.epsilon)`: the
    /// eval-mode output is unchanged. The history starts empty.
    fn from_batch_norm(
        bn: &BatchNorm,
        config: CrossIterBatchNormConfig,
        layout: WeightLayout,
    ) -> Self {
        let device = bn.gamma.val().device();
        let mut norm = config.with_affine(true).init(layout, &device);
        let std = bn.running_var.value_sync().add_scalar(bn.epsilon).sqrt();
        norm.gamma = Some(Param::from_tensor(bn.gamma.val().detach()));
        norm.beta = Some(Param::from_tensor(bn.beta.val().detach()));
        norm.running_mean = AveragedState::new(bn.running_mean.value_sync());
        norm.running_var = AveragedState::new(norm.eps_placement.var_for_std(std, norm.epsilon));
        norm
    }
}

impl Conv2dCbn {
    /// Continues a model trained with `conv` followed by burn's `BatchNorm`:
    /// the conv is kept as it is, the BatchNorm becomes the CBN (see
    /// [`CrossIterBatchNorm`]; options from `norm`, `num_features` taken from
    /// the conv). Eval-mode outputs are unchanged.
    ///
    /// # Errors
    ///
    /// If the BatchNorm's channels are not the conv's output channels.
    pub fn from_conv_batch_norm(
        conv: Conv2d,
        bn: &BatchNorm,
        norm: CrossIterBatchNormConfig,
    ) -> Result<Self, RecordShapeError> {
        let norm = CrossIterBatchNorm::after_conv(
            "Conv2dCbn::from_conv_batch_norm",
            (&conv.weight.dims(), conv.groups),
            bn,
            norm,
        )?;
        Ok(Conv2dCbn { conv, norm })
    }

    /// Folds the CBN, **in inference mode** (running statistics), into the
    /// conv: one `Conv2d` whose output equals this block's eval output. For
    /// deployment only: the folded conv no longer normalizes anything and
    /// must not be trained as if it did.
    pub fn fold(&self) -> Conv2d {
        self.norm.inference_affine().fold_into_conv2d(&self.conv)
    }
}

impl Conv3dCbn {
    /// Continues a model trained with `conv` followed by burn's `BatchNorm`
    /// (see [`Conv2dCbn::from_conv_batch_norm`]). Eval-mode outputs are
    /// unchanged.
    ///
    /// # Errors
    ///
    /// If the BatchNorm's channels are not the conv's output channels.
    pub fn from_conv_batch_norm(
        conv: Conv3d,
        bn: &BatchNorm,
        norm: CrossIterBatchNormConfig,
    ) -> Result<Self, RecordShapeError> {
        let norm = CrossIterBatchNorm::after_conv(
            "Conv3dCbn::from_conv_batch_norm",
            (&conv.weight.dims(), conv.groups),
            bn,
            norm,
        )?;
        Ok(Conv3dCbn { conv, norm })
    }

    /// Folds the CBN, **in inference mode**, into the conv (see
    /// [`Conv2dCbn::fold`]).
    pub fn fold(&self) -> Conv3d {
        self.norm.inference_affine().fold_into_conv3d(&self.conv)
    }
}

impl Conv1dCbn {
    /// Continues a model trained with `conv` followed by burn's `BatchNorm`
    /// (see [`Conv2dCbn::from_conv_batch_norm`]). Eval-mode outputs are
    /// unchanged.
    ///
    /// # Errors
    ///
    /// If the BatchNorm's channels are not the conv's output channels.
    pub fn from_conv_batch_norm(
        conv: Conv1d,
        bn: &BatchNorm,
        norm: CrossIterBatchNormConfig,
    ) -> Result<Self, RecordShapeError> {
        let norm = CrossIterBatchNorm::after_conv(
            "Conv1dCbn::from_conv_batch_norm",
            (&conv.weight.dims(), conv.groups),
            bn,
            norm,
        )?;
        Ok(Conv1dCbn { conv, norm })
    }

    /// Folds the CBN, **in inference mode**, into the conv (see
    /// [`Conv2dCbn::fold`]).
    pub fn fold(&self) -> Conv1d {
        self.norm.inference_affine().fold_into_conv1d(&self.conv)
    }
}

impl CrossIterBatchNorm {
    /// [`from_batch_norm`](Self::from_batch_norm) after a conv with weight
    /// shape `weight_dims` `[C, C_in/G, k...]` and `groups`, the channels
    /// checked (`caller` names the conversion in the error).
    fn after_conv(
        caller: &'static str,
        (weight_dims, groups): (&[usize], usize),
        bn: &BatchNorm,
        norm: CrossIterBatchNormConfig,
    ) -> Result<Self, RecordShapeError> {
        let c_out = weight_dims[0];
        check_record_shape(caller, "BatchNorm channels", &[c_out], &bn.gamma.dims())?;
        let layout = WeightLayout {
            groups,
            patch_len: weight_dims[1..].iter().product(),
        };
        let config = CrossIterBatchNormConfig {
            num_features: c_out,
            ..norm
        };
        Ok(Self::from_batch_norm(bn, config, layout))
    }
}

impl LinearCbn {
    /// Continues a model trained with `linear` followed by burn's
    /// `BatchNorm` over its output features (see
    /// [`Conv2dCbn::from_conv_batch_norm`]).
    ///
    /// # Errors
    ///
    /// If the BatchNorm's channels are not the linear layer's outputs.
    pub fn from_linear_batch_norm(
        linear: Linear,
        bn: &BatchNorm,
        norm: CrossIterBatchNormConfig,
    ) -> Result<Self, RecordShapeError> {
        let [d_in, d_out] = linear.weight.dims();
        check_record_shape(
            "LinearCbn::from_linear_batch_norm",
            "BatchNorm channels",
            &[d_out],
            &bn.gamma.dims(),
        )?;
        let layout = WeightLayout {
            groups: 1,
            patch_len: d_in,
        };
        let norm = CrossIterBatchNorm::from_batch_norm(
            bn,
            CrossIterBatchNormConfig {
                num_features: d_out,
                ..norm
            },
            layout,
        );
        Ok(LinearCbn { linear, norm })
    }

    /// Folds the CBN, **in inference mode**, into the linear layer (see
    /// [`Conv2dCbn::fold`]).
    pub fn fold(&self) -> Linear {
        self.norm.inference_affine().fold_into_linear(&self.linear)
    }
}
