//! Batch Renormalization (Ioffe 2017, [arXiv:1702.03275](https://arxiv.org/abs/1702.03275))
//! for burn.
//!
//! A drop-in replacement for burn's `BatchNorm` that keeps working when only
//! 1–4 samples fit in a training step. See [`BatchRenorm`] for the math and
//! [`BatchRenormConfig`] for the knobs.
//!
//! ```
//! use bnorm_renorm::BatchRenormConfig;
//! use burn::tensor::{Device, Tensor};
//!
//! let device = Device::flex().autodiff();
//! let brn = BatchRenormConfig::new(8).init(&device);
//! let x = Tensor::<4>::ones([2, 8, 4, 4], &device);
//! let y = brn.forward(x); // training: batch statistics, running state updated
//! assert_eq!(y.dims(), [2, 8, 4, 4]);
//! ```

mod batch_renorm;
mod checkpoint;
mod config;
mod convert;

pub use batch_renorm::BatchRenorm;
pub use bnorm_core::{
    AveragedState, CheckpointError, EpsPlacement, HostCounter, InferenceAffine, RecordShapeError,
    Schedule,
};
pub use config::BatchRenormConfig;
