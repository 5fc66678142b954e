//! The training step both layers share, from the input `y` to the
//! normalized output: Cross-Iteration BN's plain or window step, and Batch
//! Renormalization's corrected plain step.
//!
//! Forward, per channel, over the `M` values of the channel (the window's
//! terms are Cross-Iteration BN's, in the `window` and `jacobian` modules
//! of the `cross-iter` feature):
//!
//! ```text
//! mu_t, var_t = moments(y),   nu_t = var_t + mu_t^2        the current batch
//! plain step:  mu = mu_t,  var = f var_t                   (f = M / (M - 1) unbiased, else 1)
//! window step: mu  = (mu_t + sum_i keep_i mu_i(W)) / n,    n = 1 + sum_i keep_i
//!              var = (nu_t + sum_i keep_i nu_i(W)) / n - mu^2          (f = 1)
//! out = (y - mu) * s + beta,   s = gamma * inv_std,   inv_std = 1 / std(var)
//! ```
//!
//! With Batch Renormalization's correction ([`RenormTerms`], on the biased
//! plain step) `gamma r` and `gamma d + beta` take the place of `gamma` and
//! `beta`, `r` and `d` computed from `mu_t`, `std(var_t)` and the running
//! statistics and held constant in the backward pass.
//!
//! [`NormStep::run`] registers the step as one autodiff operation with its
//! gradient in closed form (see [`crate::closed_form`] for the formulas and
//! the devices it covers) and differentiates the same forward pass through
//! burn's autodiff, operation by operation, elsewhere
//! ([`NormStep::through_autodiff`], which the tests compare it with).

#[cfg(feature = "cross-iter")]
use std::sync::Arc;

use burn::tensor::Tensor;

use crate::moments::{bessel, moments_per_channel, values_per_channel};
#[cfg(feature = "cross-iter")]
use crate::window::{window_with_weights, WeightedWindow, WindowHistory};
#[cfg(feature = "cross-iter")]
use crate::HistoryEntries;
use crate::{compose_affine, reciprocal, EpsPlacement};

/// One training step of normalization on `y` (a layer's output for CBN,
/// the layer's input for BRN).
#[derive(Debug, Clone)]
pub struct NormStep<const D: usize> {
    /// The layer output `[N, C, ...]`.
    pub y: Tensor<D>,
    /// Learnable scale `[C]` (with `beta`, or neither).
    pub gamma: Option<Tensor<1>>,
    /// Learnable shift `[C]`.
    pub beta: Option<Tensor<1>>,
    /// What the step normalizes with.
    pub statistics: StepStatistics,
    /// Numerical-stability term.
    pub epsilon: f64,
    /// Where `epsilon` enters the standard deviation.
    pub eps_placement: EpsPlacement,
    /// Batch Renormalization's correction (with `StepStatistics::Plain {
    /// unbiased: false }`): the step normalizes with scale `gamma * r` and
    /// shift `gamma * d + beta` (`r` and `d` without `gamma`, `beta`), `r`
    /// and `d` computed from the batch's mean and standard deviation and
    /// the running ones, constants of the backward pass.
    pub renorm: Option<RenormTerms>,
}

/// What Batch Renormalization's `r` and `d` are computed from, besides the
/// batch (see [`renorm_correction`](crate::renorm_correction)).
#[derive(Debug, Clone)]
pub struct RenormTerms {
    /// Running mean `mu`, `[C]`.
    pub running_mean: Tensor<1>,
    /// Running standard deviation `sigma`, `[C]`.
    pub running_std: Tensor<1>,
    /// Clip bound of `r`.
    pub rmax: f64,
    /// Clip bound of `|d|`.
    pub dmax: f64,
}

/// The statistics a training step normalizes with.
#[derive(Debug, Clone)]
// One is built per training step and moved once: boxing the window's
// terms would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum StepStatistics {
    /// Plain BatchNorm (burn-in, window 1): the batch's mean and biased
    /// variance, times `M / (M - 1)` when `unbiased` (and `M > 1`).
    Plain {
        /// Bessel's correction on the variance.
        unbiased: bool,
    },
    /// The window: the current moments and, once it holds entries, the
    /// compensated history (Cross-Iteration BN; the `cross-iter` feature).
    #[cfg(feature = "cross-iter")]
    Window(Option<WindowTerms>),
}

/// The history of a window step and what compensates it.
#[cfg(feature = "cross-iter")]
#[derive(Debug, Clone)]
pub struct WindowTerms {
    /// All `K` entries, filled or not.
    pub entries: EntriesSource,
    /// How many entries, from the front, hold data (at least one).
    pub filled: usize,
    /// The layer's current weight `[G, C/G, F]`: with its graph for the
    /// gradient through the history terms, detached for constant terms.
    pub weight: Tensor<3>,
    /// The layer's current bias `[C]`, likewise.
    pub bias: Option<Tensor<1>>,
    /// Taylor compensation factor.
    pub rho: f64,
}

/// The history entries of a window step, read when the step needs them:
/// after the batch moments. Reading a state that merges updates (burn's
/// `RunningState::value_sync` always, [`AveragedState`](crate::AveragedState)
/// when several threads updated it) queues a division by the thread count;
/// queued before the moments, it keeps a fusing backend from merging the
/// moments' operations into their reductions.
#[cfg(feature = "cross-iter")]
#[derive(Clone)]
pub struct EntriesSource(Arc<dyn Fn() -> HistoryEntries>);

#[cfg(feature = "cross-iter")]
impl EntriesSource {
    /// Entries read by `read` when the step needs them.
    pub fn new(read: impl Fn() -> HistoryEntries + 'static) -> Self {
        EntriesSource(Arc::new(read))
    }

    /// Entries already at hand.
    pub fn values(entries: HistoryEntries) -> Self {
        Self::new(move || entries.clone())
    }

    /// The entries.
    pub fn read(&self) -> HistoryEntries {
        (self.0)()
    }
}

#[cfg(feature = "cross-iter")]
impl core::fmt::Debug for EntriesSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("EntriesSource")
    }
}

/// What a training step computes: the output, with its graph, and the
/// statistics, detached.
#[derive(Debug, Clone)]
pub struct NormStepOutput<const D: usize> {
    /// The normalized output, shape of `y`.
    pub output: Tensor<D>,
    /// The batch's mean `mu_t`, `[C]`.
    pub batch_mean: Tensor<1>,
    /// The batch's biased variance `var_t`, `[C]`.
    pub batch_var: Tensor<1>,
    /// The batch's mean of squares `nu_t = var_t + mu_t^2`, `[C]`.
    pub batch_mean_sq: Tensor<1>,
    /// The mean normalized with, `[C]`.
    pub mean: Tensor<1>,
    /// The variance normalized with, `[C]`.
    pub var: Tensor<1>,
    /// The standard deviation normalized with, `std(var)` under the step's
    /// eps placement, `[C]` (for BRN's plain step, `sigma_B`).
    pub std: Tensor<1>,
}

impl<const D: usize> NormStep<D> {
    /// Runs the step: the output with its graph, the statistics detached;
    /// the gradient in closed form where [`crate::closed_form`] covers the
    /// device, else through burn's autodiff.
    pub fn run(self) -> NormStepOutput<D> {
        match crate::closed_form::covers(&self) {
            true => crate::closed_form::closed_form(self),
            false => self.through_autodiff(),
        }
    }

    /// Runs the step with burn's autodiff differentiating every operation
    /// (any device; the reference the closed form is tested against).
    pub fn through_autodiff(self) -> NormStepOutput<D> {
        let forward = self.forward();
        NormStepOutput {
            output: forward.output,
            batch_mean: forward.batch_mean.detach(),
            batch_var: forward.batch_var.detach(),
            batch_mean_sq: forward.batch_mean_sq.detach(),
            mean: forward.mean.detach(),
            var: forward.var.detach(),
            std: forward.std.detach(),
        }
    }

    /// The forward pass, every value the backward pass may need.
    pub(crate) fn forward(self) -> Forward<D> {
        let dims = self.y.dims();
        let count = values_per_channel(&dims);
        let (flat_y, mean_t, var) = moments_per_channel(self.y);
        let mean_sq = var.clone().add(mean_t.clone().square());
        let [batch_mean, batch_var, batch_mean_sq] =
            [mean_t.clone(), var, mean_sq].map(|t| t.reshape([dims[1]]));
        #[cfg(feature = "cross-iter")]
        let mut entries = None;
        #[cfg(feature = "cross-iter")]
        let mut window = None;
        let (mean, var) = match self.statistics {
            StepStatistics::Plain { unbiased } => {
                let var = match unbiased {
                    true => bessel(batch_var.clone(), count),
                    false => batch_var.clone(),
                };
                (batch_mean.clone(), var)
            }
            // The window of the batch alone: `nu_t - mu_t^2` is `var_t`,
            // which the two-pass moments give without the difference's
            // cancellation (or its overflow, where `nu_t` is beyond
            // float32).
            #[cfg(feature = "cross-iter")]
            StepStatistics::Window(None) => (batch_mean.clone(), batch_var.clone()),
            #[cfg(feature = "cross-iter")]
            StepStatistics::Window(Some(terms)) => {
                let read = terms.entries.read();
                entries = Some(read.clone());
                let moments = read.compensate(terms.weight, terms.bias, terms.rho);
                let history = WindowHistory {
                    moments,
                    filled: terms.filled,
                };
                let weighted =
                    window_with_weights(batch_mean.clone(), batch_mean_sq.clone(), history);
                let statistics = (weighted.mean.clone(), weighted.var.clone());
                window = Some(weighted);
                statistics
            }
        };
        let std = self.eps_placement.std(var.clone(), self.epsilon);
        let inv_std = reciprocal(std.clone());
        // Batch Renormalization: `gamma r` and `gamma d + beta` in place of
        // `gamma` and `beta`, `r` and `d` detached.
        let (gamma, beta, renorm) = match self.renorm {
            Some(terms) => {
                let correction = crate::renorm_correction(
                    batch_mean.clone(),
                    std.clone(),
                    terms.running_mean,
                    terms.running_std,
                    terms.rmax,
                    terms.dmax,
                );
                let (r, d) = (correction.r, correction.d);
                let (gamma, beta) = compose_affine(self.gamma, self.beta, r.clone(), d.clone());
                (Some(gamma), Some(beta), Some((r, d)))
            }
            None => (self.gamma, self.beta, None),
        };
        let gamma_eff = gamma.clone();
        // out = gamma (y - mu) / std + beta = (y - mu_t) s + (beta + (mu_t - mu) s)
        // with s = gamma / std: the full-size tensor sees a subtraction, a
        // multiply and an add, which a fusing backend runs as one kernel. On
        // the `[N, C, S]` view, reshaped at the end: a reshape between them
        // would split it.
        let (scale, beta) = compose_affine(gamma, beta, inv_std.clone(), batch_mean.zeros_like());
        let shift = beta.add(batch_mean.clone().sub(mean.clone()).mul(scale.clone()));
        // The reshapes first: one between the subtraction and the rest
        // would end the kernel there.
        let column = |t: Tensor<1>| t.reshape([1, dims[1], 1]);
        let (scale_column, shift_column) = (column(scale.clone()), column(shift));
        let centered = flat_y.clone().sub(mean_t.clone());
        let output = centered.mul(scale_column).add(shift_column).reshape(dims);
        Forward {
            output,
            batch_mean,
            batch_var,
            batch_mean_sq,
            mean,
            var,
            flat_y,
            batch_mean_column: mean_t,
            std,
            inv_std,
            scale,
            #[cfg(feature = "cross-iter")]
            window,
            #[cfg(feature = "cross-iter")]
            entries,
            gamma_eff,
            renorm,
        }
    }
}

/// Every value of the forward pass.
pub(crate) struct Forward<const D: usize> {
    pub(crate) output: Tensor<D>,
    pub(crate) batch_mean: Tensor<1>,
    pub(crate) batch_var: Tensor<1>,
    pub(crate) batch_mean_sq: Tensor<1>,
    pub(crate) mean: Tensor<1>,
    pub(crate) var: Tensor<1>,
    /// `y` on the `[N, C, S]` view.
    pub(crate) flat_y: Tensor<3>,
    /// `mu_t` as `[1, C, 1]`.
    pub(crate) batch_mean_column: Tensor<3>,
    pub(crate) std: Tensor<1>,
    pub(crate) inv_std: Tensor<1>,
    /// `s = gamma * inv_std`.
    pub(crate) scale: Tensor<1>,
    /// The window's weights (a window step with entries).
    #[cfg(feature = "cross-iter")]
    pub(crate) window: Option<WeightedWindow>,
    /// The entries read (a window step with entries).
    #[cfg(feature = "cross-iter")]
    pub(crate) entries: Option<HistoryEntries>,
    /// The scale the step normalizes with: `gamma`, or `gamma r` (`r`)
    /// with Batch Renormalization's correction.
    pub(crate) gamma_eff: Option<Tensor<1>>,
    /// `r` and `d` (with Batch Renormalization's correction).
    pub(crate) renorm: Option<(Tensor<1>, Tensor<1>)>,
}

impl<const D: usize> Forward<D> {
    /// `1 / n`, `n` the values averaged per channel (a window step with
    /// entries; `None` for a step that averages the batch alone).
    pub(crate) fn window_inv_count(&self) -> Option<Tensor<1>> {
        #[cfg(feature = "cross-iter")]
        if let Some(window) = &self.window {
            return Some(window.inv_count.clone());
        }
        None
    }
}
