use bnorm_core::AveragedState;
use burn::module::{Content, DisplaySettings, Flag, Module, ModuleDisplay, Param};
use burn::tensor::{Device, Tensor};

use bnorm_core::guard::{guard_entry, StateGuard};
use bnorm_core::moments::{bessel, values_per_channel};
use bnorm_core::shape::check_input;
use bnorm_core::{
    history_in_use, BurnInMode, EntriesSource, EpsPlacement, HistoryEntries, HostCounter,
    MomentJacobians, NormStep, StepStatistics, WindowTerms, COUNT_SATURATION,
};

use crate::history::CbnHistory;
use crate::{PlainVariance, RunningStatistics, WeightLayout};

/// Cross-Iteration Batch Normalization over the output `y` `[N, C, ...]` of
/// a layer with weight `W` (and optional bias `b`).
///
/// Training (the autodiff backend), per channel `c`, with `M` values per
/// channel and up to `K = window - 1` history entries `i` recorded at
/// earlier weights `W_i`:
///
/// ```text
/// mu_t = mean(y),  nu_t = mean(y^2)                     the current iteration
/// mu_i(W) = mu_i + rho * <d mu_i/dW, W - W_i>           each entry compensated
/// nu_i(W) = nu_i + rho * <d nu_i/dW, W - W_i>           to the current weight
/// entry i dropped for channel c where nu_i(W) - mu_i(W)^2 < 0
/// mu  = mean of the kept mu (the current one always kept)
/// var = mean of the kept nu - mu^2
/// out = gamma * (y - mu) / sqrt(var + eps) + beta
/// ```
///
/// During burn-in (and with `window = 1`) the layer is BatchNorm with the
/// current batch's mean and (by default unbiased) variance. Gradients flow
/// through `mu_t`, `nu_t` and `y`, and, with `history_gradient`, through
/// the compensated history terms into `W` and `b`.
///
/// Running statistics: `running = (1 - momentum) * running + momentum * s`
/// with `s` the current batch's mean and unbiased variance (or the window's,
/// see [`RunningStatistics`]). Inference (`model.valid()`):
/// `out = gamma * (y - mu_run) / sqrt(var_run + eps) + beta`.
///
/// Use it through [`Conv2dCbn`](crate::Conv2dCbn) or
/// [`LinearCbn`](crate::LinearCbn), or from a custom layer with
/// [`forward_with`](Self::forward_with). Everything a resumed run needs —
/// running statistics, step counter and the whole history — is in the
/// record.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct CrossIterBatchNorm {
    /// Learnable scale `gamma`, `[C]` (absent when not affine).
    pub gamma: Option<Param<Tensor<1>>>,
    /// Learnable shift `beta`, `[C]` (absent when not affine).
    pub beta: Option<Param<Tensor<1>>>,
    /// Whether training behavior is enabled (burn's `BatchNorm`'s flag:
    /// [`Module::freeze`](burn::module::Module::freeze) turns it off,
    /// `unfreeze` on). Not saved in checkpoints.
    pub training: Param<Flag>,
    /// Running mean, `[C]`.
    pub running_mean: AveragedState<1>,
    /// Running variance, `[C]`.
    pub running_var: AveragedState<1>,
    /// Training steps seen (saved as `[1]`).
    pub steps: HostCounter,
    /// The window's history (absent for `window = 1`).
    pub history: Option<CbnHistory>,
    /// Number of channels `C`.
    pub num_features: usize,
    /// The paper's `k`.
    pub window: usize,
    /// Layout of the preceding layer's weight.
    #[module(skip)]
    pub layout: WeightLayout,
    /// Taylor compensation factor.
    pub rho: f64,
    /// Burn-in length in training steps.
    pub burn_in: usize,
    /// How the history is phased in.
    #[module(skip)]
    pub burn_in_mode: BurnInMode,
    /// Weight of new statistics in the running ones.
    pub momentum: f64,
    /// Numerical-stability term.
    pub epsilon: f64,
    /// Where `epsilon` enters the standard deviation.
    #[module(skip)]
    pub eps_placement: EpsPlacement,
    /// Variance of plain BatchNorm steps.
    #[module(skip)]
    pub plain_variance: PlainVariance,
    /// What the running statistics average.
    #[module(skip)]
    pub running_statistics: RunningStatistics,
    /// Gradient through the compensated history terms.
    pub history_gradient: bool,
    /// Update the running statistics and the history only where the
    /// step's statistics are finite (see
    /// [`CrossIterBatchNormConfig::state_guard`](crate::CrossIterBatchNormConfig::state_guard)).
    pub state_guard: bool,
}

impl CrossIterBatchNorm {
    /// Normalizes the output `y` of a custom layer.
    ///
    /// - `y`: the layer output `[N, C, ...]` (rank 2 to 5, channels on axis 1);
    /// - `weight`: the layer's current weight viewed as `[G, C/G, F]` (see
    ///   [`WeightLayout`]), `bias` its bias `[C]` if any — with their graph,
    ///   so `history_gradient` can reach them;
    /// - `jacobians`: called in training steps only, returns the Jacobians
    ///   of this step's moments (e.g.
    ///   [`bnorm_core::conv2d_moment_jacobians`] on detached input and
    ///   output).
    ///
    /// In inference mode (no autodiff) only `y` is used.
    ///
    /// # Panics
    ///
    /// If `y`'s rank or channel count is wrong, or the weight or the
    /// Jacobians do not match the layout the layer was built for. The state
    /// is untouched then.
    pub fn forward_with<const D: usize>(
        &self,
        y: Tensor<D>,
        weight: Tensor<3>,
        bias: Option<Tensor<1>>,
        jacobians: impl FnOnce() -> MomentJacobians,
    ) -> Tensor<D> {
        check_input("CrossIterBatchNorm", &y.dims(), self.num_features);
        let expected = [
            self.layout.groups,
            self.num_features / self.layout.groups,
            self.layout.patch_len,
        ];
        if weight.dims() != expected {
            panic!(
                "CrossIterBatchNorm was built for a layer weight of shape [groups, channels / groups, \
                 patch] = {expected:?}, received {:?}",
                weight.dims()
            );
        }
        if let Some(b) = &bias {
            if b.dims() != [self.num_features] {
                panic!(
                    "CrossIterBatchNorm expects a bias of shape [{}], received {:?}",
                    self.num_features,
                    b.dims()
                );
            }
        }
        if self.is_training(&y.device()) {
            self.forward_train(y, weight, bias, jacobians)
        } else {
            self.forward_frozen(y)
        }
    }

    /// Whether a forward pass on `device` trains: an autodiff device and a
    /// layer not frozen.
    pub(crate) fn is_training(&self, device: &Device) -> bool {
        bnorm_core::trains(device, &self.training)
    }

    /// Normalizes with the running statistics on any backend, state
    /// untouched: `out = gamma * (y - mu_run) / std(var_run) + beta`.
    /// Inference mode; on an autodiff backend gradients flow to `y`,
    /// `gamma` and `beta` (fine-tuning with frozen statistics).
    ///
    /// # Panics
    ///
    /// If `y`'s rank or channel count is wrong.
    pub fn forward_frozen<const D: usize>(&self, y: Tensor<D>) -> Tensor<D> {
        check_input("CrossIterBatchNorm", &y.dims(), self.num_features);
        self.inference_affine().apply(y)
    }

    /// Training steps seen, on the host.
    pub fn steps(&self) -> usize {
        self.steps.get() as usize
    }

    /// History entries held, on the host (0 for `window = 1`).
    pub fn history_len(&self) -> usize {
        self.history.as_ref().map_or(0, |h| h.len())
    }

    fn forward_train<const D: usize>(
        &self,
        y: Tensor<D>,
        weight: Tensor<3>,
        bias: Option<Tensor<1>>,
        jacobians: impl FnOnce() -> MomentJacobians,
    ) -> Tensor<D> {
        let count = values_per_channel(&y.dims());
        let plain = StepStatistics::Plain {
            unbiased: self.plain_variance == PlainVariance::Unbiased,
        };
        // Counted on the host: this step's iteration (1-based) decides the
        // burn-in without a device operation; the counter itself moves last,
        // once nothing can panic.
        let iteration = (self.steps.local() + 1.0).min(COUNT_SATURATION) as usize;
        // The history and the entries it holds after this step's push.
        let mut push = None;
        let statistics = match &self.history {
            Some(history) => {
                let capacity = self.window - 1;
                match history_in_use(iteration, capacity, self.burn_in, self.burn_in_mode) {
                    // Burn-in: plain BatchNorm; the window is neither used
                    // nor recorded, so no Jacobians either.
                    0 => plain,
                    in_use => {
                        let filled = history.local_len();
                        push = Some((history, (filled + 1).min(in_use)));
                        let (w, b) = if self.history_gradient {
                            (weight.clone(), bias.clone())
                        } else {
                            (weight.clone().detach(), bias.clone().map(Tensor::detach))
                        };
                        // Read in the step, after the batch moments (see
                        // `EntriesSource`); the clone shares the buffers.
                        let (reader, device) = (history.clone(), y.device());
                        StepStatistics::Window((filled > 0).then(|| WindowTerms {
                            entries: EntriesSource::new(move || reader.entries_on(&device)),
                            filled,
                            weight: w,
                            bias: b,
                            rho: self.rho,
                        }))
                    }
                }
            }
            None => plain,
        };
        let step = NormStep {
            y,
            gamma: self.gamma.as_ref().map(|g| g.val()),
            beta: self.beta.as_ref().map(|b| b.val()),
            statistics,
            epsilon: self.epsilon,
            eps_placement: self.eps_placement,
            renorm: None,
        }
        .run();
        if let Some((history, filled)) = push {
            let entry = HistoryEntries::record(
                step.batch_mean.clone(),
                step.batch_mean_sq.clone(),
                jacobians(),
                weight.detach(),
                bias.map(Tensor::detach),
            );
            let entry = match self.state_guard {
                true => guard_entry(entry),
                false => entry,
            };
            history.push(entry, filled);
        }

        let (stat_mean, stat_var) = match self.running_statistics {
            RunningStatistics::CurrentBatch => (step.batch_mean, bessel(step.batch_var, count)),
            RunningStatistics::Window => (step.mean, step.var),
        };
        let (stat_mean, stat_var) = (stat_mean.detach(), stat_var.detach());
        let guard = StateGuard::new(self.state_guard, &stat_mean, &stat_var);
        let m = self.momentum;
        let blend = |state: &AveragedState<1>, value: Tensor<1>| {
            let old = state.value_sync_on(&value.device());
            let updated = old.clone().mul_scalar(1.0 - m).add(value.mul_scalar(m));
            state.update(guard.apply(updated, old).detach());
        };
        blend(&self.running_mean, stat_mean);
        blend(&self.running_var, stat_var);
        self.steps.increment();
        step.output
    }
}

impl ModuleDisplay for CrossIterBatchNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        bnorm_core::mode::display_settings()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let content = content
            .add("num_features", &self.num_features)
            .add("window", &self.window)
            .add("rho", &self.rho)
            .add("momentum", &self.momentum)
            .add("epsilon", &self.epsilon)
            .add("affine", &self.gamma.is_some())
            .add("steps", &self.steps())
            .add("history_len", &self.history_len());
        bnorm_core::mode::with_training_flag(content, &self.training)
    }
}
