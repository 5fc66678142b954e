//! Backend-generic statistic math for small-batch normalization layers.
//!
//! Everything here is a pure function over burn tensors on any device,
//! besides [`HostCounter`] and [`AveragedState`], the
//! one piece of state both layers keep alike; the stateful modules live in
//! `bnorm-renorm` and `bnorm-crossiter` and call into this crate, so each
//! formula exists exactly once.
//!
//! - [`counter`]: step counts kept on the host and saved in the record.
//! - [`guard`]: state updates only where the batch statistics are finite.
//! - [`averaged_state`]: burn's `RunningState` without its division by
//!   one (CBN's history buffers).
//! - [`moments`](mod@moments): per-channel moments of `[N, C, ...]` tensors (rank 2..=5)
//!   and of padded `[N, C, L]` sequences with a `[N, L]` mask.
//! - [`reciprocal`](mod@reciprocal): `1 / x` without burn-ndarray's approximate SIMD `recip`.
//! - [`renorm`]: the Batch Renormalization correction `r`, `d`.
//! - [`schedule`]: values as a function of the training step (the `rmax` /
//!   `dmax` ramps), evaluated on the host.
//! - [`shape`]: the shape checks and broadcast helpers shared by the layers.
//! - [`record_check`]: shape errors of conversions and checkpoints.
//! - [`mode`]: training or inference, as burn's `BatchNorm` decides.
//! - [`norm_step`]: the training step both layers share (CBN's plain or
//!   window statistics, BRN's corrected ones), `y` to the normalized
//!   output, with its gradient in closed form ([`closed_form`]).
//! - With the `cross-iter` feature (which `bnorm-crossiter` enables and
//!   `bnorm-renorm` does not), Cross-Iteration BN's math: `window`, the
//!   window statistics and burn-in; `compensation`, what a history entry
//!   keeps and its Taylor compensation to the current weight (and, in the
//!   closed-form step, its gradient); `jacobian`, closed-form Jacobians of
//!   moments with respect to a conv2d or linear weight (computed without
//!   autodiff), and `conv1d_jacobian`, `conv3d_jacobian`, the same for a
//!   1D and a 3D convolution.
//! - [`inference`]: inference-mode normalization as one affine map, and
//!   folding it into the preceding layer.

pub mod averaged_state;
mod backend;
pub mod counter;
pub mod guard;
pub mod mode;
pub mod moments;
pub mod reciprocal;
pub mod renorm;
mod replica_updates;
pub mod schedule;
pub mod shape;

pub use averaged_state::AveragedState;
pub use counter::{HostCounter, COUNT_SATURATION};
pub use mode::trains;
pub use moments::{masked_moments, moments, BatchMoments};
pub use reciprocal::reciprocal;
pub use renorm::{renorm_correction, EpsPlacement, RenormCorrection};
pub use schedule::Schedule;
pub mod record_check;
pub use record_check::{
    check_record_shape, load_checkpoint, CheckpointError, CheckpointErrorKind, RecordShapeError,
};
pub mod closed_form;
pub mod inference;
pub mod norm_step;
pub use inference::{compose_affine, InferenceAffine};

// Cross-Iteration BN's window (its statistics, history entries, their
// compensation and its gradient) and the weight Jacobians of the moments
// that only CBN's fused blocks compute: a BatchRenorm-only build does not
// compile them.
#[cfg(feature = "cross-iter")]
pub mod compensation;
#[cfg(feature = "cross-iter")]
mod compensation_gradient;
#[cfg(feature = "cross-iter")]
pub mod window;
#[cfg(feature = "cross-iter")]
pub use compensation::{linearize, CompensatedMoments, HistoryEntries, MomentJacobians};

#[cfg(feature = "cross-iter")]
pub mod conv1d_jacobian;
#[cfg(feature = "cross-iter")]
pub mod conv3d_jacobian;
#[cfg(feature = "cross-iter")]
mod inner;
#[cfg(feature = "cross-iter")]
pub mod jacobian;
#[cfg(feature = "cross-iter")]
pub mod product_conv;
#[cfg(feature = "cross-iter")]
mod tap_products;
#[cfg(feature = "cross-iter")]
pub use conv1d_jacobian::{conv1d_moment_jacobians, Conv1dGeometry};
#[cfg(feature = "cross-iter")]
pub use conv3d_jacobian::{conv3d_moment_jacobians, Conv3dGeometry};
#[cfg(feature = "cross-iter")]
pub use jacobian::{conv2d_moment_jacobians, linear_moment_jacobians, Conv2dGeometry};
#[cfg(feature = "cross-iter")]
pub use norm_step::{EntriesSource, WindowTerms};
pub use norm_step::{NormStep, NormStepOutput, RenormTerms, StepStatistics};
#[cfg(feature = "cross-iter")]
pub use product_conv::{conv1d_by_products, conv2d_by_products, conv3d_by_products};
#[cfg(feature = "cross-iter")]
pub use window::{history_in_use, window_statistics, BurnInMode, FrontPush, WindowHistory};

/// The unit tests' bit-for-bit comparisons.
#[cfg(test)]
mod test_bits {
    use burn::tensor::{Device, Tensor};

    /// The unit tests' device: burn-flex with autodiff.
    pub(crate) fn autodiff_device() -> Device {
        Device::flex().autodiff()
    }

    /// A float32 tensor's values as their bit patterns.
    pub(crate) fn bits<const D: usize>(tensor: Tensor<D>) -> Vec<u32> {
        let values = tensor.into_data().try_to_vec::<f32>().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    }
}
