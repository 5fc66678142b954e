//! Cross-Iteration Batch Normalization (Yao et al. 2020,
//! [arXiv:2002.05712](https://arxiv.org/abs/2002.05712)) for burn.
//!
//! With a batch of 1–4 samples, one iteration's statistics are noise. CBN
//! averages them with those of the last `k - 1` iterations, each compensated
//! to the current weights by a first-order Taylor step, so the window acts
//! like a `k` times larger batch while the weights move.
//!
//! The compensation needs the derivative of each channel's mean and mean of
//! squares with respect to the preceding layer's weight, so CBN comes fused
//! with its layer:
//!
//! - [`Conv2dCbn`]: a burn `Conv2d` (any stride, padding, dilation, groups,
//!   bias) followed by CBN;
//! - [`Conv3dCbn`]: the same after a burn `Conv3d`, for volumes;
//! - [`Conv1dCbn`]: the same after a burn `Conv1d`, for signals and
//!   sequences `[N, C, L]`;
//! - [`LinearCbn`]: a burn `Linear` followed by CBN, over `[N, C]` or
//!   `[N, L, C]`;
//! - [`CrossIterBatchNorm`]: the normalization alone, for a custom layer that
//!   supplies its own output, weight and Jacobians
//!   ([`CrossIterBatchNorm::forward_with`]).
//!
//! The Jacobians are closed-form (no second backward pass) and the history
//! stores no weight copies; see [`bnorm_core::jacobian`].

mod checkpoint;
mod config;
mod conv1d_cbn;
mod conv2d_cbn;
mod conv3d_cbn;
mod conv_block;
mod convert;
mod cross_iter_batch_norm;
mod history;
mod linear_cbn;

pub use bnorm_core::{
    AveragedState, BurnInMode, CheckpointError, EpsPlacement, HostCounter, MomentJacobians,
    RecordShapeError,
};
pub use config::{CrossIterBatchNormConfig, PlainVariance, RunningStatistics, WeightLayout};
pub use conv1d_cbn::{Conv1dCbn, Conv1dCbnConfig};
pub use conv2d_cbn::{Conv2dCbn, Conv2dCbnConfig};
pub use conv3d_cbn::{Conv3dCbn, Conv3dCbnConfig};
pub use cross_iter_batch_norm::CrossIterBatchNorm;
pub use history::CbnHistory;
pub use linear_cbn::{LinearCbn, LinearCbnConfig};
