use bnorm_core::AveragedState;
use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d, Conv3d};
use burn::nn::{BatchNorm, Linear};

use bnorm_core::{check_record_shape, HostCounter, InferenceAffine, RecordShapeError};

use crate::{BatchRenorm, BatchRenormConfig};

impl BatchRenorm {
    /// A BatchRenorm that continues a burn `BatchNorm`: gamma and beta are
    /// kept, the running mean is copied and the running std set to
    /// `sqrt(running_var + bn.epsilon)`, so the eval-mode output is the
    /// BatchNorm's. `step` places the layer on its `rmax`/`dmax` schedule
    /// (0 = from the start, BatchNorm-like; past the schedule's end = fully
    /// relaxed). The other options (momentum, epsilon for training,
    /// schedules) come from `config`.
    ///
    /// For a `BatchNormRecord`, load it first:
    /// `BatchNormConfig::new(c).with_epsilon(eps).init(device).load_record(record)`.
    ///
    /// # Errors
    ///
    /// If `config.num_features` is not the BatchNorm's channel count.
    pub fn from_batch_norm(
        bn: &BatchNorm,
        config: &BatchRenormConfig,
        step: usize,
    ) -> Result<Self, RecordShapeError> {
        let [c] = bn.gamma.dims();
        check_record_shape(
            "BatchRenorm::from_batch_norm",
            "num_features",
            &[config.num_features],
            &[c],
        )?;
        let device = bn.gamma.val().device();
        let mut layer = config.clone().with_affine(true).init(&device);
        layer.gamma = Some(Param::from_tensor(bn.gamma.val().detach()));
        layer.beta = Some(Param::from_tensor(bn.beta.val().detach()));
        layer.running_mean = AveragedState::new(bn.running_mean.value_sync());
        layer.running_std =
            AveragedState::new(bn.running_var.value_sync().add_scalar(bn.epsilon).sqrt());
        layer.steps = HostCounter::at(step as f64, &device);
        Ok(layer)
    }

    /// The inference-mode transform as `x * scale + shift` per channel,
    /// from the running statistics with every pending update in (a read
    /// that merges nothing: see `AveragedState::value`).
    pub fn inference_affine(&self) -> InferenceAffine {
        InferenceAffine::new(
            self.running_mean.value(),
            self.running_std.value(),
            self.gamma.as_ref().map(|g| g.val()),
            self.beta.as_ref().map(|b| b.val()),
        )
    }

    /// Folds this layer, **in inference mode**, into the `conv` before it:
    /// one `Conv2d` whose output equals `brn.forward(conv.forward(x))` with
    /// the running statistics. For deployment only: the folded conv has no
    /// batch statistics and must not be trained as if it normalized.
    ///
    /// # Errors
    ///
    /// If the conv's output channels are not this layer's channels.
    pub fn fold_into_conv2d(&self, conv: &Conv2d) -> Result<Conv2d, RecordShapeError> {
        self.checked_fold(
            "BatchRenorm::fold_into_conv2d",
            "conv output channels",
            conv.weight.dims()[0],
        )
        .map(|affine| affine.fold_into_conv2d(conv))
    }

    /// Folds this layer, in inference mode, into the 1D `conv` before it
    /// (see [`fold_into_conv2d`](Self::fold_into_conv2d)).
    ///
    /// # Errors
    ///
    /// If the conv's output channels are not this layer's channels.
    pub fn fold_into_conv1d(&self, conv: &Conv1d) -> Result<Conv1d, RecordShapeError> {
        self.checked_fold(
            "BatchRenorm::fold_into_conv1d",
            "conv output channels",
            conv.weight.dims()[0],
        )
        .map(|affine| affine.fold_into_conv1d(conv))
    }

    /// Folds this layer, in inference mode, into the 3D `conv` before it
    /// (see [`fold_into_conv2d`](Self::fold_into_conv2d)).
    ///
    /// # Errors
    ///
    /// If the conv's output channels are not this layer's channels.
    pub fn fold_into_conv3d(&self, conv: &Conv3d) -> Result<Conv3d, RecordShapeError> {
        self.checked_fold(
            "BatchRenorm::fold_into_conv3d",
            "conv output channels",
            conv.weight.dims()[0],
        )
        .map(|affine| affine.fold_into_conv3d(conv))
    }

    /// Folds this layer, in inference mode, into the `linear` layer before
    /// it (see [`fold_into_conv2d`](Self::fold_into_conv2d)).
    ///
    /// # Errors
    ///
    /// If the linear layer's output features are not this layer's channels.
    pub fn fold_into_linear(&self, linear: &Linear) -> Result<Linear, RecordShapeError> {
        self.checked_fold(
            "BatchRenorm::fold_into_linear",
            "linear output features",
            linear.weight.dims()[1],
        )
        .map(|affine| affine.fold_into_linear(linear))
    }

    /// The inference map, once the preceding layer's `outputs` (named
    /// `what`) are checked against this layer's channels (`method` names
    /// the caller in the error).
    fn checked_fold(
        &self,
        method: &'static str,
        what: &str,
        outputs: usize,
    ) -> Result<InferenceAffine, RecordShapeError> {
        check_record_shape(method, what, &[self.num_features], &[outputs])?;
        Ok(self.inference_affine())
    }
}
