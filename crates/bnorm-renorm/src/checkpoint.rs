use std::path::Path;

use bnorm_core::CheckpointError;

use crate::BatchRenorm;

impl BatchRenorm {
    /// Loads a checkpoint written with [`Module::save_file`](burn::module::Module::save_file):
    /// gamma, beta, running mean and std and the step count, each checked
    /// against this module's shape (channels, affine or not) by burn's
    /// loader. A file that cannot be read or does not fit gives an error
    /// naming the path and the cause.
    pub fn load_checkpoint(self, path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        bnorm_core::load_checkpoint(self, path)
    }
}
