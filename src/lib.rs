//! # bnorm — small-batch normalization layers for burn
//!
//! When only 1–4 samples fit in a training step, BatchNorm's batch
//! statistics are too noisy to train with and too unlike the population to
//! evaluate with. This facade re-exports:
//!
//! - [`renorm`] (`bnorm-renorm`): **Batch Renormalization** (Ioffe 2017),
//!   BatchNorm whose batch statistics are corrected towards the running ones
//!   by clipped, stop-gradient factors `r` and `d`.
//! - [`crossiter`] (`bnorm-crossiter`): **Cross-Iteration Batch
//!   Normalization** (Yao et al. 2020), statistics averaged over the last
//!   `k` iterations, each compensated to the current weights; fused with its
//!   conv (1D, 2D or 3D) or linear layer.
//! - [`core`] (`bnorm-core`): the backend-generic statistic math the layers
//!   share.
//!
//! The `pytorch` feature (default) adds [`pytorch`]: importing the
//! reference implementations' PyTorch checkpoints.
//!
//! The layers run on any burn 0.22 device (`Device::flex()`,
//! `Device::ndarray()`, `Device::wgpu(..)`, `Device::cuda(i)`, each with
//! `.autodiff()` to train). The `wgpu` feature enables burn's wgpu backend
//! (Vulkan, Metal, DirectX 12) and the module `wgpu`; the `cuda` feature
//! burn's CUDA backend and the module `cuda`.

pub use bnorm_core as core;
pub use bnorm_crossiter as crossiter;
pub use bnorm_renorm as renorm;

pub use bnorm_core::{
    AveragedState, BurnInMode, CheckpointError, CheckpointErrorKind, EpsPlacement, HostCounter,
    InferenceAffine, RecordShapeError, Schedule,
};
pub use bnorm_crossiter::{
    Conv1dCbn, Conv1dCbnConfig, Conv2dCbn, Conv2dCbnConfig, Conv3dCbn, Conv3dCbnConfig,
    CrossIterBatchNorm, CrossIterBatchNormConfig, LinearCbn, LinearCbnConfig,
};
pub use bnorm_renorm::{BatchRenorm, BatchRenormConfig};

/// The README's Rust examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;

/// The guide's Rust examples, likewise.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
pub struct GuideExamples;

/// Re-export of the burn version the layers are built against (0.22).
pub use burn;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod device_probe;
#[cfg(feature = "wgpu")]
pub mod wgpu;

#[cfg(feature = "pytorch")]
pub mod pytorch;
