//! Training or inference, decided as burn's `BatchNorm` decides it.

use burn::module::{Flag, Param};
use burn::tensor::Device;

/// Whether a layer with flag `training` trains on `device`: an autodiff
/// device and a layer not frozen ([`Module::freeze`](burn::module::Module::freeze)
/// and `valid()` turn the flag off, `unfreeze` and `train()` on).
pub fn trains(device: &Device, training: &Param<Flag>) -> bool {
    device.is_autodiff() && training.is_enabled()
}
