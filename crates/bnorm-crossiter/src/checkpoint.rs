use std::path::Path;

use bnorm_core::CheckpointError;

use crate::{Conv1dCbn, Conv2dCbn, Conv3dCbn, CrossIterBatchNorm, LinearCbn};

/// `load_checkpoint` for each CBN module: one loader, burn's checked one,
/// so the docs cannot drift apart.
macro_rules! checkpoint {
    ($($module:ident),*) => {$(
        impl $module {
            /// Loads a checkpoint written with
            /// [`Module::save_file`](burn::module::Module::save_file): the
            /// parameters, running statistics, step count and the
            /// whole history window, each checked against this module's
            /// shape (channels, window, layer shape, bias or not) by
            /// burn's loader. A file that cannot be read or does not fit
            /// gives an error naming the path and the cause.
            pub fn load_checkpoint(self, path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
                bnorm_core::load_checkpoint(self, path)
            }
        }
    )*};
}

checkpoint!(
    CrossIterBatchNorm,
    Conv1dCbn,
    Conv2dCbn,
    Conv3dCbn,
    LinearCbn
);
