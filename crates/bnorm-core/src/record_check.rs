//! Shape errors a user can act on: a conversion or fold between layers of
//! different channel counts ([`RecordShapeError`]), and a checkpoint that
//! cannot be read or does not fit the module ([`CheckpointError`], over
//! burn's checked loader, which compares every tensor's shape with the
//! module's).

use core::fmt;

use burn::store::{ModuleRecord, RecordError};
use burn::tensor::Bytes;

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

/// Loading a checkpoint file failed: the file could not be read (missing,
/// truncated, not a burnpack file), or its tensors do not fit the module
/// (another layer, channel count or configuration: burn names the
/// tensors that are missing, extra or of another shape).
#[derive(Debug)]
pub struct CheckpointError {
    /// The module the checkpoint was loaded into (e.g. `Conv2dCbn`).
    pub layer: &'static str,
    /// The checkpoint's path.
    pub path: std::path::PathBuf,
    /// What went wrong, in a user's terms.
    pub kind: CheckpointErrorKind,
    /// burn's reason.
    pub error: RecordError,
}

/// What kind of failure a [`CheckpointError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointErrorKind {
    /// There is no file at the path.
    NotFound,
    /// The file exists but could not be read (permissions, a directory).
    Unreadable,
    /// The file ends early or is empty: an interrupted save or copy.
    Truncated,
    /// The file is not a burnpack checkpoint (another format, or damaged
    /// from its first bytes).
    NotACheckpoint,
    /// A checkpoint, of another layer, channel count or configuration
    /// (window, affine, bias): tensors missing, extra or of another shape.
    Mismatch,
}

impl CheckpointErrorKind {
    /// The kind of `error`, from burn's variant and message.
    fn of(error: &RecordError) -> Self {
        match error {
            RecordError::Validation(_) => CheckpointErrorKind::Mismatch,
            RecordError::Io(message) => {
                let message = message.to_lowercase();
                if message.contains("no such file") || message.contains("not found") {
                    CheckpointErrorKind::NotFound
                } else if message.contains("truncated") || message.contains("insufficient bytes") {
                    CheckpointErrorKind::Truncated
                } else if message.contains("magic") || message.contains("header") {
                    CheckpointErrorKind::NotACheckpoint
                } else {
                    CheckpointErrorKind::Unreadable
                }
            }
        }
    }

    /// The kind, as the cause a user reads.
    fn describe(self) -> &'static str {
        match self {
            CheckpointErrorKind::NotFound => "the file does not exist",
            CheckpointErrorKind::Unreadable => "the file cannot be read",
            CheckpointErrorKind::Truncated => {
                "the file is truncated or empty (an interrupted save or copy?)"
            }
            CheckpointErrorKind::NotACheckpoint => "the file is not a burnpack checkpoint",
            CheckpointErrorKind::Mismatch => {
                "the checkpoint is of another layer, channel count or configuration"
            }
        }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not load the {} checkpoint {}: {} ({})",
            self.layer,
            self.path.display(),
            self.kind.describe(),
            self.error
        )
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Reads a checkpoint written with `Module::save_file` and loads it into
/// `module` with burn's checked loader (every tensor present, none extra,
/// every shape the module's): the one path every layer's
/// `load_checkpoint` takes. Nothing is applied unless every check passes;
/// on an error `module` is dropped (clone it first to keep it: a clone
/// shares its tensors).
///
/// The whole file is read into memory first: burn's own `load_file` may
/// leave tensors backed by the file (memory-mapped on burn-flex), which a
/// training run that rotates its checkpoints would then delete under the
/// model.
pub fn load_checkpoint<M: burn::module::Module>(
    module: M,
    path: impl AsRef<std::path::Path>,
) -> Result<M, CheckpointError> {
    let path = path.as_ref();
    let name = std::any::type_name::<M>();
    let fail = |error| CheckpointError {
        layer: name.rsplit("::").next().unwrap_or(name),
        path: path.to_path_buf(),
        kind: CheckpointErrorKind::of(&error),
        error,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(RecordError::Io(e.to_string())))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(fail)?;
    module.try_load_record(record).map_err(fail)
}
