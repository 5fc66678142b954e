//! Checking a record against the module it is loaded into.
//!
//! burn's `Module::load_record` takes whatever tensors the record holds: a
//! checkpoint written for 32 channels loads into a 64-channel layer and only
//! fails (or silently broadcasts) at the next forward pass. The layers of
//! this workspace compare every recorded tensor's shape with the module's
//! first and return a [`RecordShapeError`] naming the first mismatch.

use core::fmt;

/// A record whose tensors do not have the shapes the module expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordShapeError {
    /// The layer type, e.g. `"BatchRenorm"`.
    pub layer: &'static str,
    /// The record field, e.g. `"running_mean"`.
    pub field: String,
    /// The shape the module holds.
    pub expected: Vec<usize>,
    /// The shape found in the record.
    pub found: Vec<usize>,
}

impl fmt::Display for RecordShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} record does not match the module: `{}` has shape {:?} in the record, \
             the module expects {:?}",
            self.layer, self.field, self.found, self.expected
        )
    }
}

impl std::error::Error for RecordShapeError {}

/// `Ok` when `found == expected`, else the error naming `layer` and `field`.
pub fn check_record_shape(
    layer: &'static str,
    field: &str,
    expected: &[usize],
    found: &[usize],
) -> Result<(), RecordShapeError> {
    if expected == found {
        Ok(())
    } else {
        Err(RecordShapeError {
            layer,
            field: field.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

/// Loading a checkpoint file failed: the file could not be read, or it was
/// written for a module of another shape.
#[derive(Debug)]
pub enum CheckpointError {
    /// burn's recorder failed (missing file, corrupt or foreign format).
    Recorder(burn::record::RecorderError),
    /// The record was read but does not fit the module.
    Shape(RecordShapeError),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Recorder(e) => write!(f, "could not read the checkpoint: {e}"),
            CheckpointError::Shape(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CheckpointError {}

impl From<burn::record::RecorderError> for CheckpointError {
    fn from(e: burn::record::RecorderError) -> Self {
        CheckpointError::Recorder(e)
    }
}

impl From<RecordShapeError> for CheckpointError {
    fn from(e: RecordShapeError) -> Self {
        CheckpointError::Shape(e)
    }
}

/// Reads a checkpoint written with `Module::save_file` (any burn file
/// recorder) and hands its record to `load`, the module's checked
/// `try_load_record`: the one path every layer's `load_checkpoint` takes.
pub fn load_checkpoint_with<B, M, R>(
    path: std::path::PathBuf,
    recorder: &R,
    device: &B::Device,
    load: impl FnOnce(M::Record) -> Result<M, RecordShapeError>,
) -> Result<M, CheckpointError>
where
    B: burn::tensor::backend::Backend,
    M: burn::module::Module<B>,
    R: burn::record::FileRecorder<B>,
{
    let record = recorder.load(path, device)?;
    Ok(load(record)?)
}

/// Shape of an optional parameter, `[]` when absent (a layer without
/// affine parameters, a conv without bias), for [`check_record_shape`].
pub fn optional_dims<B: burn::tensor::backend::Backend>(
    param: &Option<burn::module::Param<burn::tensor::Tensor<B, 1>>>,
) -> Vec<usize> {
    param
        .as_ref()
        .map(|p| p.dims().to_vec())
        .unwrap_or_default()
}
