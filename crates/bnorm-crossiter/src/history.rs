use burn::module::{Module, RunningState};
use burn::tensor::{backend::Backend, Tensor};

use crate::WeightLayout;

/// The last `K = window - 1` iterations' statistics and their Jacobians,
/// newest first, in fixed-shape buffers so the record holds them: a
/// checkpoint resumes with the window intact.
///
/// Per entry: `mean`, `mean_sq` (`C` each), `jac_mean` (`G x F`, the patch
/// mean of each weight group) and `jac_mean_sq` (`C x F`, as large as the
/// weight): `|W| + G F + 2C` floats against the reference's `3|W| + 2C`
/// (no weight copies, see `bnorm_core::jacobian`).
#[derive(Module, Debug)]
pub struct CbnHistory<B: Backend> {
    /// `mu_i`, `[K, C]`.
    pub mean: RunningState<Tensor<B, 2>>,
    /// `nu_i`, `[K, C]`.
    pub mean_sq: RunningState<Tensor<B, 2>>,
    /// `d mu_i / dW` per group, `[K, G, F]`.
    pub jac_mean: RunningState<Tensor<B, 3>>,
    /// `d nu_i / dW` per channel, `[K, C, F]`.
    pub jac_mean_sq: RunningState<Tensor<B, 3>>,
    /// How many entries (from the front) hold data, `[1]`.
    pub fill: RunningState<Tensor<B, 1>>,
}

impl<B: Backend> CbnHistory<B> {
    pub(crate) fn new(
        capacity: usize,
        channels: usize,
        layout: WeightLayout,
        device: &B::Device,
    ) -> Self {
        let WeightLayout { groups, patch_len } = layout;
        CbnHistory {
            mean: RunningState::new(Tensor::zeros([capacity, channels], device)),
            mean_sq: RunningState::new(Tensor::zeros([capacity, channels], device)),
            jac_mean: RunningState::new(Tensor::zeros([capacity, groups, patch_len], device)),
            jac_mean_sq: RunningState::new(Tensor::zeros([capacity, channels, patch_len], device)),
            fill: RunningState::new(Tensor::zeros([1], device)),
        }
    }

    /// Entries the buffers can hold (`window - 1`).
    pub fn capacity(&self) -> usize {
        self.mean.value().dims()[0]
    }

    /// Entries holding data, on the host.
    pub fn len(&self) -> usize {
        use burn::tensor::ElementConversion;
        self.fill.value_sync().into_scalar().elem::<f64>() as usize
    }

    /// True before the first window step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Floats the buffers hold (the memory cost of the window).
    pub fn num_floats(&self) -> usize {
        [
            self.mean.value().shape().num_elements(),
            self.mean_sq.value().shape().num_elements(),
            self.jac_mean.value().shape().num_elements(),
            self.jac_mean_sq.value().shape().num_elements(),
        ]
        .iter()
        .sum()
    }
}
