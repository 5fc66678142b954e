use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::record::FileRecorder;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use bnorm_core::{
    check_record_shape, load_checkpoint_with, optional_dims, CheckpointError, RecordShapeError,
};

use crate::conv1d_cbn::Conv1dCbnRecord;
use crate::conv2d_cbn::Conv2dCbnRecord;
use crate::conv3d_cbn::Conv3dCbnRecord;
use crate::cross_iter_batch_norm::CrossIterBatchNormRecord;
use crate::linear_cbn::LinearCbnRecord;
use crate::{Conv1dCbn, Conv2dCbn, Conv3dCbn, CrossIterBatchNorm, LinearCbn};

const LAYER: &str = "CrossIterBatchNorm";

impl<B: Backend> CrossIterBatchNorm<B> {
    /// Checks every tensor of `record` (parameters, running statistics,
    /// counter and the whole history) against this module's shapes and
    /// returns the first mismatch — another channel count, another window,
    /// another layer shape — instead of loading it.
    pub fn check_record(
        &self,
        record: &CrossIterBatchNormRecord<B>,
    ) -> Result<(), RecordShapeError> {
        let c = [self.num_features];
        let affine = optional_dims(&self.gamma);
        check_record_shape(LAYER, "gamma", &affine, &optional_dims(&record.gamma))?;
        check_record_shape(LAYER, "beta", &affine, &optional_dims(&record.beta))?;
        check_record_shape(LAYER, "running_mean", &c, &record.running_mean.dims())?;
        check_record_shape(LAYER, "running_var", &c, &record.running_var.dims())?;
        check_record_shape(LAYER, "iterations", &[1], &record.iterations.dims())?;
        match (&self.history, &record.history) {
            (None, None) => Ok(()),
            (Some(h), Some(r)) => {
                let buffers: [(&str, Vec<usize>, Vec<usize>); 7] = [
                    (
                        "history.mean",
                        h.mean.value().dims().to_vec(),
                        r.mean.dims().to_vec(),
                    ),
                    (
                        "history.mean_sq",
                        h.mean_sq.value().dims().to_vec(),
                        r.mean_sq.dims().to_vec(),
                    ),
                    (
                        "history.jac_mean",
                        h.jac_mean.value().dims().to_vec(),
                        r.jac_mean.dims().to_vec(),
                    ),
                    (
                        "history.jac_mean_sq",
                        h.jac_mean_sq.value().dims().to_vec(),
                        r.jac_mean_sq.dims().to_vec(),
                    ),
                    (
                        "history.lin_mean",
                        h.lin_mean.value().dims().to_vec(),
                        r.lin_mean.dims().to_vec(),
                    ),
                    (
                        "history.lin_mean_sq",
                        h.lin_mean_sq.value().dims().to_vec(),
                        r.lin_mean_sq.dims().to_vec(),
                    ),
                    ("history.fill", vec![1], r.fill.dims().to_vec()),
                ];
                buffers.iter().try_for_each(|(field, expected, found)| {
                    check_record_shape(LAYER, field, expected, found)
                })
            }
            (Some(h), None) => {
                check_record_shape(LAYER, "history (window)", &h.mean.value().dims(), &[])
            }
            (None, Some(r)) => check_record_shape(LAYER, "history (window)", &[], &r.mean.dims()),
        }
    }

    /// [`check_record`](Self::check_record), then burn's `load_record`.
    pub fn try_load_record(
        self,
        record: CrossIterBatchNormRecord<B>,
    ) -> Result<Self, RecordShapeError> {
        self.check_record(&record)?;
        Ok(self.load_record(record))
    }
}

/// A layer's bias, absent when built without one.
type OptionalBias<B> = Option<Param<Tensor<B, 1>>>;

/// Checks a fused block's layer weight and bias (`{prefix}.weight`,
/// `{prefix}.bias`) against the module's, as every block's
/// `try_load_record` does before its CBN state.
fn check_layer<B: Backend, const D: usize>(
    block: &'static str,
    prefix: &str,
    weight: (&Param<Tensor<B, D>>, &Param<Tensor<B, D>>),
    bias: (&OptionalBias<B>, &OptionalBias<B>),
) -> Result<(), RecordShapeError> {
    check_record_shape(
        block,
        &format!("{prefix}.weight"),
        &weight.0.dims(),
        &weight.1.dims(),
    )?;
    check_record_shape(
        block,
        &format!("{prefix}.bias"),
        &optional_dims(bias.0),
        &optional_dims(bias.1),
    )
}

/// `try_load_record` and `load_checkpoint` for a fused block: its layer
/// (field `$layer`) and its CBN (field `norm`).
macro_rules! block_checkpoint {
    ($block:ident, $record:ident, $layer:ident) => {
        impl<B: Backend> $block<B> {
            #[doc = concat!(
                        "Checks the `", stringify!($layer), "` weight and bias and the whole CBN ",
                        "state of `record` against this module, then loads it."
                    )]
            pub fn try_load_record(self, record: $record<B>) -> Result<Self, RecordShapeError> {
                check_layer(
                    stringify!($block),
                    stringify!($layer),
                    (&self.$layer.weight, &record.$layer.weight),
                    (&self.$layer.bias, &record.$layer.bias),
                )?;
                self.norm.check_record(&record.norm)?;
                Ok(self.load_record(record))
            }

            /// Reads a checkpoint written with `Module::save_file` and loads
            /// it with [`try_load_record`](Self::try_load_record).
            pub fn load_checkpoint<R: FileRecorder<B>>(
                self,
                path: impl Into<PathBuf>,
                recorder: &R,
                device: &B::Device,
            ) -> Result<Self, CheckpointError> {
                load_checkpoint_with(path.into(), recorder, device, |record| {
                    self.try_load_record(record)
                })
            }
        }
    };
}

block_checkpoint!(Conv1dCbn, Conv1dCbnRecord, conv);
block_checkpoint!(Conv2dCbn, Conv2dCbnRecord, conv);
block_checkpoint!(Conv3dCbn, Conv3dCbnRecord, conv);
block_checkpoint!(LinearCbn, LinearCbnRecord, linear);
