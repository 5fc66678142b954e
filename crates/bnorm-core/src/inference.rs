//! Inference-mode normalization as one per-channel affine map, and folding
//! it into the weight of the layer before it.
//!
//! With running statistics `mu`, `sigma` (a standard deviation, eps
//! included) and the learned `gamma`, `beta`:
//!
//! ```text
//! y = gamma * (x - mu) / sigma + beta = x * scale + shift
//! scale = gamma / sigma,   shift = beta - mu * scale
//! ```
//!
//! A conv or linear layer `x -> W x + b` followed by that map is the layer
//! `x -> (scale * W) x + (scale * b + shift)` (scale applied per output
//! channel): the normalization costs nothing at inference. Only at
//! inference: in training the statistics come from the batch.

use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d, Conv3d};
use burn::nn::Linear;
use burn::tensor::Tensor;

/// The per-channel affine map `y = x * scale + shift`, `[C]` each.
#[derive(Debug, Clone)]
pub struct InferenceAffine {
    pub scale: Tensor<1>,
    pub shift: Tensor<1>,
}

impl InferenceAffine {
    /// From running mean and std (`[C]`) and optional `gamma`, `beta`:
    /// `(x - mu) / sigma` composed with the learned affine.
    pub fn new(
        mean: Tensor<1>,
        std: Tensor<1>,
        gamma: Option<Tensor<1>>,
        beta: Option<Tensor<1>>,
    ) -> Self {
        let inv_std = crate::reciprocal(std);
        let shift = mean.mul(inv_std.clone()).neg();
        let (scale, shift) = compose_affine(gamma, beta, inv_std, shift);
        InferenceAffine { scale, shift }
    }

    /// Applies the map to `[N, C, ...]`.
    pub fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x.mul(crate::shape::per_channel::<D>(self.scale.clone()))
            .add(crate::shape::per_channel::<D>(self.shift.clone()))
    }

    /// Folds the map into a weight whose output channels run along
    /// `out_axis` and its optional bias `[C]`: returns `(scale * W,
    /// scale * b + shift)`.
    pub fn fold<const D: usize>(
        &self,
        weight: Tensor<D>,
        bias: Option<Tensor<1>>,
        out_axis: usize,
    ) -> (Tensor<D>, Tensor<1>) {
        let [c] = self.scale.dims();
        let mut shape = [1; D];
        shape[out_axis] = c;
        let weight = weight.mul(self.scale.clone().reshape(shape));
        let bias = match bias {
            Some(b) => b.mul(self.scale.clone()).add(self.shift.clone()),
            None => self.shift.clone(),
        };
        (weight, bias)
    }

    /// A copy of `conv` with this map folded in (weight `[C, ...]`).
    pub fn fold_into_conv1d(&self, conv: &Conv1d) -> Conv1d {
        let mut folded = conv.clone();
        (folded.weight, folded.bias) = self.fold_params(&conv.weight, &conv.bias, 0);
        folded
    }

    /// A copy of `conv` with this map folded in (weight `[C, ...]`).
    pub fn fold_into_conv2d(&self, conv: &Conv2d) -> Conv2d {
        let mut folded = conv.clone();
        (folded.weight, folded.bias) = self.fold_params(&conv.weight, &conv.bias, 0);
        folded
    }

    /// A copy of `conv` with this map folded in (weight `[C, ...]`).
    pub fn fold_into_conv3d(&self, conv: &Conv3d) -> Conv3d {
        let mut folded = conv.clone();
        (folded.weight, folded.bias) = self.fold_params(&conv.weight, &conv.bias, 0);
        folded
    }

    /// A copy of `linear` with this map folded in (burn's weight layout
    /// `[d_in, C]`).
    pub fn fold_into_linear(&self, linear: &Linear) -> Linear {
        let mut folded = linear.clone();
        (folded.weight, folded.bias) = self.fold_params(&linear.weight, &linear.bias, 1);
        folded
    }

    /// [`fold`](Self::fold) on a layer's parameters, as new parameters.
    fn fold_params<const D: usize>(
        &self,
        weight: &Param<Tensor<D>>,
        bias: &Option<Param<Tensor<1>>>,
        out_axis: usize,
    ) -> (Param<Tensor<D>>, Option<Param<Tensor<1>>>) {
        let (weight, bias) = self.fold(
            weight.val().detach(),
            bias.as_ref().map(|b| b.val().detach()),
            out_axis,
        );
        (Param::from_tensor(weight), Some(Param::from_tensor(bias)))
    }
}

/// Composes a per-channel map `x * scale + shift` with the learned affine
/// `gamma * . + beta`: `(gamma * scale, gamma * shift + beta)`, or the map
/// itself for a layer without affine parameters. Every layer's training and
/// inference paths fold their per-channel factors through this on `[C]`
/// vectors, so the full-size tensor sees one multiply and one add.
pub fn compose_affine(
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
    scale: Tensor<1>,
    shift: Tensor<1>,
) -> (Tensor<1>, Tensor<1>) {
    match (gamma, beta) {
        (Some(gamma), Some(beta)) => (scale.mul(gamma.clone()), shift.mul(gamma).add(beta)),
        _ => (scale, shift),
    }
}
