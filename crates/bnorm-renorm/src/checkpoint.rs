use std::path::PathBuf;

use burn::module::Module;
use burn::record::FileRecorder;
use burn::tensor::backend::Backend;

use bnorm_core::{
    check_record_shape, load_checkpoint_with, optional_dims, CheckpointError, RecordShapeError,
};

use crate::batch_renorm::BatchRenormRecord;
use crate::BatchRenorm;

const LAYER: &str = "BatchRenorm";

impl<B: Backend> BatchRenorm<B> {
    /// Loads `record` after checking that every tensor in it has the shape
    /// this module holds (channels, affine or not). burn's own
    /// [`Module::load_record`] does not check and would build a module that
    /// fails later; this returns the first mismatch instead and leaves
    /// nothing half-loaded.
    pub fn try_load_record(self, record: BatchRenormRecord<B>) -> Result<Self, RecordShapeError> {
        let c = [self.num_features];
        let affine = optional_dims(&self.gamma);
        check_record_shape(LAYER, "gamma", &affine, &optional_dims(&record.gamma))?;
        check_record_shape(LAYER, "beta", &affine, &optional_dims(&record.beta))?;
        check_record_shape(LAYER, "running_mean", &c, &record.running_mean.dims())?;
        check_record_shape(LAYER, "running_std", &c, &record.running_std.dims())?;
        check_record_shape(LAYER, "steps", &[1], &record.steps.dims())?;
        Ok(self.load_record(record))
    }

    /// Reads a checkpoint written with [`Module::save_file`] (any burn
    /// file recorder) and loads it with [`BatchRenorm::try_load_record`].
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
