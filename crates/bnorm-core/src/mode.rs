//! Training or inference, decided as burn's `BatchNorm` decides it.

use burn::module::{Content, DisplaySettings, Flag, Param};
use burn::tensor::Device;

/// Whether a layer with flag `training` trains on `device`: an autodiff
/// device and a layer not frozen ([`Module::freeze`](burn::module::Module::freeze)
/// and `valid()` turn the flag off, `unfreeze` and `train()` on).
pub fn trains(device: &Device, training: &Param<Flag>) -> bool {
    device.is_autodiff() && training.is_enabled()
}

/// How a layer prints, as burn's `BatchNorm` does: its settings on one
/// line (`ModuleDisplay::custom_settings`).
pub fn display_settings() -> Option<DisplaySettings> {
    DisplaySettings::new()
        .with_new_line_after_attribute(false)
        .optional()
}

/// `content` with the training flag added when it is off, as burn's
/// `BatchNorm` shows it (`ModuleDisplay::custom_content`).
pub fn with_training_flag(content: Content, training: &Param<Flag>) -> Option<Content> {
    match training.is_enabled() {
        true => content.optional(),
        false => content.add("training", training).optional(),
    }
}
