use bnorm_core::AveragedState;
use burn::config::Config;
use burn::module::{Initializer, Param};
use burn::tensor::{Device, Tensor};

use bnorm_core::{BurnInMode, EpsPlacement, HostCounter};

use crate::history::CbnHistory;
use crate::CrossIterBatchNorm;

/// The variance used when the window is not (plain BatchNorm steps: burn-in,
/// window 1).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum PlainVariance {
    /// `sum (y - mu)^2 / (M - 1)`: the reference's choice.
    Unbiased,
    /// `sum (y - mu)^2 / M`: BatchNorm's; with window 1 CBN is then exactly
    /// burn's `BatchNorm`.
    Biased,
}

/// What the running statistics (used at inference) average.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum RunningStatistics {
    /// The current iteration's mean and unbiased variance: the reference's
    /// choice.
    CurrentBatch,
    /// The window's (compensated, averaged) mean and variance: the
    /// statistics the layer actually normalized with.
    Window,
}

/// Shape of the layer weight a [`CrossIterBatchNorm`] follows, viewed as
/// `[groups, channels / groups, patch_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightLayout {
    /// Weight groups `G` (a conv's `groups`, 1 for a linear layer).
    pub groups: usize,
    /// Values per patch `F` (`C_in / G * kh * kw` for a conv, `d_in` for a
    /// linear layer).
    pub patch_len: usize,
}

/// Configuration of a [`CrossIterBatchNorm`]; also the `norm` part of
/// [`Conv2dCbnConfig`](crate::Conv2dCbnConfig) and
/// [`LinearCbnConfig`](crate::LinearCbnConfig).
///
/// The defaults reproduce the authors' reference (Howal/
/// Cross-iterationBatchNorm) except for three choices made for users: eps
/// inside the square root (BatchNorm's), the bias compensated too, and the
/// gradient flowing through the compensated history (`history_gradient`,
/// which is what makes CBN train at batch size 1; see the README for the
/// measurement). `reference()` restores every reference choice.
#[derive(Config, Debug)]
pub struct CrossIterBatchNormConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// The paper's `k`: the current iteration plus `k - 1` history entries.
    /// 1 is BatchNorm. Default: 8.
    #[config(default = 8)]
    pub window: usize,
    /// Taylor compensation factor: 1 = first-order compensation, 0 = naive
    /// averaging of stale statistics. Default: 1.
    #[config(default = 1.0)]
    pub rho: f64,
    /// Training steps before the history is phased in (see `burn_in_mode`).
    /// Default: 0 (the full window from the first step).
    #[config(default = 0)]
    pub burn_in: usize,
    /// How the history is phased in. Default: two-stage (none during the
    /// burn-in, the full window after).
    #[config(default = "BurnInMode::TwoStage")]
    pub burn_in_mode: BurnInMode,
    /// Weight of the new statistics in the running ones. Default: 0.1.
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Numerical-stability term. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Where `epsilon` enters the standard deviation. Default:
    /// `InsideSqrt` (`sqrt(var + eps)`, the reference's `out_p = true`);
    /// `OnStd` is the reference's default `sqrt(var) + eps`.
    #[config(default = "EpsPlacement::InsideSqrt")]
    pub eps_placement: EpsPlacement,
    /// Learnable per-channel `gamma`, `beta`. Default: true.
    #[config(default = true)]
    pub affine: bool,
    /// The variance of plain BatchNorm steps. Default: unbiased (the
    /// reference's).
    #[config(default = "PlainVariance::Unbiased")]
    pub plain_variance: PlainVariance,
    /// What the running statistics average. Default: the current batch (the
    /// reference's).
    #[config(default = "RunningStatistics::CurrentBatch")]
    pub running_statistics: RunningStatistics,
    /// Let the gradient flow from the window statistics into the current
    /// weight through the compensated history terms (they are functions of
    /// it to first order). The reference treats them as constants (false).
    /// Default: true.
    #[config(default = true)]
    pub history_gradient: bool,
    /// Update the running statistics and the history only where the
    /// step's statistics are finite (see [`bnorm_core::guard`]): a batch
    /// with a NaN or an infinity leaves the running mean and variance of
    /// the channels it reaches as they were, and records a history entry
    /// that the window leaves out for the weight groups it reaches. The
    /// step count and the history's fill still count the step (they
    /// are kept on the host, and a decision on the device costs no
    /// synchronization), so burn-in moves on and the bad step takes a
    /// place in the window, empty for those channels. Default: true.
    #[config(default = true)]
    pub state_guard: bool,
}

impl CrossIterBatchNormConfig {
    /// Every choice of the reference implementation (for reproducing its
    /// numbers): eps on the std, history as constants. Window, rho and
    /// burn-in are left as they are.
    pub fn reference(self) -> Self {
        self.with_eps_placement(EpsPlacement::OnStd)
            .with_plain_variance(PlainVariance::Unbiased)
            .with_running_statistics(RunningStatistics::CurrentBatch)
            .with_history_gradient(false)
    }

    /// Initializes the normalization for a layer whose weight has `layout`.
    /// `gamma = 1`, `beta = 0`, running mean 0, running variance 1, empty
    /// history.
    ///
    /// # Panics
    ///
    /// If `num_features` or `window` is 0, `num_features` is not a multiple
    /// of `layout.groups`, or `momentum` is outside `[0, 1]`.
    pub fn init(&self, layout: WeightLayout, device: &Device) -> CrossIterBatchNorm {
        let c = self.num_features;
        assert!(
            c > 0,
            "CrossIterBatchNormConfig: num_features must be positive"
        );
        assert!(
            self.window > 0,
            "CrossIterBatchNormConfig: window must be at least 1 (1 = BatchNorm)"
        );
        assert!(
            layout.groups > 0 && c.is_multiple_of(layout.groups),
            "CrossIterBatchNormConfig: {c} channels cannot be split into {} weight groups",
            layout.groups
        );
        assert!(
            (0.0..=1.0).contains(&self.momentum),
            "CrossIterBatchNormConfig: momentum must be in [0, 1], received {}",
            self.momentum
        );
        let affine = |init: Initializer| -> Option<Param<Tensor<1>>> {
            self.affine.then(|| init.init([c], device))
        };
        let history =
            (self.window > 1).then(|| CbnHistory::new(self.window - 1, c, layout, device));
        CrossIterBatchNorm {
            gamma: affine(Initializer::Ones),
            beta: affine(Initializer::Zeros),
            training: Param::from_bool(true),
            running_mean: AveragedState::new(Tensor::zeros([c], device)),
            running_var: AveragedState::new(Tensor::ones([c], device)),
            steps: HostCounter::new(device),
            history,
            num_features: c,
            window: self.window,
            layout,
            rho: self.rho,
            burn_in: self.burn_in,
            burn_in_mode: self.burn_in_mode,
            momentum: self.momentum,
            epsilon: self.epsilon,
            eps_placement: self.eps_placement,
            plain_variance: self.plain_variance,
            running_statistics: self.running_statistics,
            history_gradient: self.history_gradient,
            state_guard: self.state_guard,
        }
    }
}
