use std::path::PathBuf;

use burn::module::Module;
use burn::record::FileRecorder;
use burn::tensor::backend::Backend;

use bnorm_core::{check_record_shape, load_checkpoint_with, CheckpointError, RecordShapeError};

use crate::conv2d_cbn::Conv2dCbnRecord;
use crate::cross_iter_batch_norm::CrossIterBatchNormRecord;
use crate::linear_cbn::LinearCbnRecord;
use crate::{Conv2dCbn, CrossIterBatchNorm, LinearCbn};

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
        let shape_of = |p: &Option<burn::module::Param<burn::tensor::Tensor<B, 1>>>| {
            p.as_ref().map(|p| p.dims().to_vec()).unwrap_or_default()
        };
        let expect_affine = if self.gamma.is_some() {
            c.to_vec()
        } else {
            vec![]
        };
        check_record_shape(LAYER, "gamma", &expect_affine, &shape_of(&record.gamma))?;
        check_record_shape(LAYER, "beta", &expect_affine, &shape_of(&record.beta))?;
        check_record_shape(LAYER, "running_mean", &c, &record.running_mean.dims())?;
        check_record_shape(LAYER, "running_var", &c, &record.running_var.dims())?;
        check_record_shape(LAYER, "iterations", &[1], &record.iterations.dims())?;
        match (&self.history, &record.history) {
            (None, None) => Ok(()),
            (Some(h), Some(r)) => {
                check_record_shape(
                    LAYER,
                    "history.mean",
                    &h.mean.value().dims(),
                    &r.mean.dims(),
                )?;
                check_record_shape(
                    LAYER,
                    "history.mean_sq",
                    &h.mean_sq.value().dims(),
                    &r.mean_sq.dims(),
                )?;
                check_record_shape(
                    LAYER,
                    "history.jac_mean",
                    &h.jac_mean.value().dims(),
                    &r.jac_mean.dims(),
                )?;
                check_record_shape(
                    LAYER,
                    "history.jac_mean_sq",
                    &h.jac_mean_sq.value().dims(),
                    &r.jac_mean_sq.dims(),
                )?;
                check_record_shape(
                    LAYER,
                    "history.lin_mean",
                    &h.lin_mean.value().dims(),
                    &r.lin_mean.dims(),
                )?;
                check_record_shape(
                    LAYER,
                    "history.lin_mean_sq",
                    &h.lin_mean_sq.value().dims(),
                    &r.lin_mean_sq.dims(),
                )?;
                check_record_shape(LAYER, "history.fill", &[1], &r.fill.dims())
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

fn check_weight(
    layer: &'static str,
    field: &str,
    expected: &[usize],
    found: &[usize],
) -> Result<(), RecordShapeError> {
    check_record_shape(layer, field, expected, found)
}

impl<B: Backend> Conv2dCbn<B> {
    /// Checks the conv weight and bias and the whole CBN state of `record`
    /// against this module, then loads it.
    pub fn try_load_record(self, record: Conv2dCbnRecord<B>) -> Result<Self, RecordShapeError> {
        check_weight(
            "Conv2dCbn",
            "conv.weight",
            &self.conv.weight.dims(),
            &record.conv.weight.dims(),
        )?;
        let bias = |b: &Option<burn::module::Param<burn::tensor::Tensor<B, 1>>>| {
            b.as_ref().map(|b| b.dims().to_vec()).unwrap_or_default()
        };
        check_weight(
            "Conv2dCbn",
            "conv.bias",
            &bias(&self.conv.bias),
            &bias(&record.conv.bias),
        )?;
        self.norm.check_record(&record.norm)?;
        Ok(self.load_record(record))
    }

    /// Reads a checkpoint written with `Module::save_file` and loads it with
    /// [`try_load_record`](Self::try_load_record).
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

impl<B: Backend> LinearCbn<B> {
    /// Checks the linear weight and bias and the whole CBN state of `record`
    /// against this module, then loads it.
    pub fn try_load_record(self, record: LinearCbnRecord<B>) -> Result<Self, RecordShapeError> {
        check_weight(
            "LinearCbn",
            "linear.weight",
            &self.linear.weight.dims(),
            &record.linear.weight.dims(),
        )?;
        let bias = |b: &Option<burn::module::Param<burn::tensor::Tensor<B, 1>>>| {
            b.as_ref().map(|b| b.dims().to_vec()).unwrap_or_default()
        };
        check_weight(
            "LinearCbn",
            "linear.bias",
            &bias(&self.linear.bias),
            &bias(&record.linear.bias),
        )?;
        self.norm.check_record(&record.norm)?;
        Ok(self.load_record(record))
    }

    /// Reads a checkpoint written with `Module::save_file` and loads it with
    /// [`try_load_record`](Self::try_load_record).
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
