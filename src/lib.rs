//! # bnorm — small-batch normalization layers for burn
//!
//! When only 1–4 samples fit in a training step, BatchNorm's batch
//! statistics are too noisy to train with and too unlike the population to
//! evaluate with. This facade re-exports:
//!
//! - [`renorm`] (`bnorm-renorm`): **Batch Renormalization** (Ioffe 2017),
//!   BatchNorm whose batch statistics are corrected towards the running ones
//!   by clipped, stop-gradient factors `r` and `d`.
//! - [`core`] (`bnorm-core`): the backend-generic statistic math the layers
//!   share.
//!
//! The `cuda` feature enables burn's CUDA backend (kernels compiled at run
//! time through NVRTC; building needs no CUDA toolkit).

pub use bnorm_core as core;
pub use bnorm_renorm as renorm;

pub use bnorm_core::{CheckpointError, EpsPlacement, RecordShapeError, Schedule};
pub use bnorm_renorm::{BatchRenorm, BatchRenormConfig};

/// Re-export of the burn version the layers are built against (`=0.21.0`).
pub use burn;

#[cfg(feature = "cuda")]
pub mod cuda;
