//! The part of the closed-form step's gradient that reaches the layer's
//! weight and bias through a compensated window (Cross-Iteration BN), in
//! the notation of [`crate::closed_form`]:
//!
//! ```text
//! dW = rho / n * (dmu * sum_i keep_i P_i + dvar * sum_i keep_i Q_i)
//! db = rho / n * (dmu * sum_i keep_i + dvar * sum_i keep_i 2 mu_i)
//! ```
//!
//! The sums over the kept entries are taken in the forward pass, where the
//! entries are at hand; the backward pass scales them per channel.

use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::NodeId;
use burn::backend::{Backend, DispatchKindConversion, DispatchTensor};
use burn::tensor::Tensor;

use crate::closed_form::register_grad;
use crate::norm_step::Forward;
use crate::shape::sum_axis;

/// The kept entries' sums the gradients into the weight and bias take,
/// in the shapes the sums leave (see [`Self::register_grads`]).
#[derive(Debug, Clone)]
pub(crate) struct CompensationSums {
    rho: f64,
    /// The weight's shape `[G, C/G, F]`.
    weight_dims: [usize; 3],
    /// `rho sum_i keep_i P_i`, per channel, `[1, G, C/G, F]`.
    jac_mean: Tensor<4>,
    /// `rho sum_i keep_i Q_i`, `[1, C, F]`.
    jac_mean_sq: Tensor<3>,
    /// `sum_i keep_i`, `[1, C]`.
    kept: Tensor<2>,
    /// `sum_i keep_i 2 mu_i`, `[1, C]`.
    kept_mean: Tensor<2>,
}

impl CompensationSums {
    pub(crate) fn new<const D: usize>(
        rho: f64,
        weight_dims: [usize; 3],
        forward: &Forward<D>,
    ) -> Self {
        let window = forward.window.as_ref().expect("a window step with entries");
        let keep = window.keep.clone();
        let entries = forward.entries.clone().expect("a window step with entries");
        let [k, g, f] = entries.jac_mean.dims();
        let [_, c_g, _] = weight_dims;
        let c = g * c_g;
        // Times rho after the sum: a fusing backend runs the product, the
        // sum and it as one kernel (without an operation after a sum it runs
        // two). The reshapes first, likewise: one between a product and its
        // sum splits them.
        let (jac_mean, keep_per_group) = (
            entries.jac_mean.reshape([k, g, 1, f]),
            keep.clone().reshape([k, g, c_g, 1]),
        );
        let keep_per_row = keep.clone().reshape([k, c, 1]);
        let jac_mean = sum_axis(jac_mean.mul(keep_per_group), 0).mul_scalar(rho);
        let jac_mean_sq = sum_axis(entries.jac_mean_sq.mul(keep_per_row), 0).mul_scalar(rho);
        let kept_mean = sum_axis(keep.mul(entries.mean), 0).mul_scalar(2.0);
        CompensationSums {
            rho,
            weight_dims,
            jac_mean,
            jac_mean_sq,
            kept: window.kept.clone(),
            kept_mean,
        }
    }

    /// Registers the gradients into the weight and bias nodes (those
    /// present) from `dmu` and `dvar` (`[1, C, 1]` each) and `1 / n`
    /// (`[C]`).
    pub(crate) fn register_grads<B: Backend>(
        self,
        grads: &mut Gradients,
        [weight_node, bias_node]: [Option<NodeId>; 2],
        [d_mean, d_var]: [Tensor<3>; 2],
        inv_count: Tensor<1>,
    ) where
        DispatchTensor: DispatchKindConversion<B>,
    {
        let [c] = inv_count.dims();
        if weight_node.is_some() {
            let [_, _, f] = self.weight_dims;
            // Every reshape before the arithmetic: a fusing backend ends a
            // kernel at a reshape between two operations.
            let per_row = |t: Tensor<3>| t.reshape([c, 1]);
            let (jac_mean, jac_mean_sq) = (
                self.jac_mean.reshape([c, f]),
                self.jac_mean_sq.reshape([c, f]),
            );
            let (d_mean_rows, d_var_rows, inv_count_rows) = (
                per_row(d_mean.clone()),
                per_row(d_var.clone()),
                inv_count.clone().reshape([c, 1]),
            );
            let d_weight = jac_mean
                .mul(d_mean_rows)
                .add(jac_mean_sq.mul(d_var_rows))
                .mul(inv_count_rows)
                .reshape(self.weight_dims);
            register_grad::<B, 3>(grads, weight_node, d_weight);
        }
        if bias_node.is_none() {
            return;
        }
        let row = |t: Tensor<3>| t.reshape([1, c]);
        let d_bias = self
            .kept
            .mul(row(d_mean))
            .add(self.kept_mean.mul(row(d_var)))
            .mul(inv_count.mul_scalar(self.rho).reshape([1, c]))
            .reshape([c]);
        register_grad::<B, 1>(grads, bias_node, d_bias);
    }
}
