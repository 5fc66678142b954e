use bnorm_core::AveragedState;
use burn::module::{Content, DisplaySettings, Flag, Module, ModuleDisplay, Param};
use burn::tensor::{Bool, Device, Tensor};

use bnorm_core::guard::StateGuard;
use bnorm_core::shape::{check_input, check_mask, per_channel};
use bnorm_core::{compose_affine, HostCounter};
use bnorm_core::{
    masked_moments, renorm_correction, BatchMoments, EpsPlacement, NormStep, RenormTerms, Schedule,
    StepStatistics,
};

/// Batch Renormalization over a `[N, C, ...]` input.
///
/// Training (the autodiff backend), per channel over every axis but 1:
///
/// ```text
/// mu_B, sigma_B   batch mean and std, sigma_B = sqrt(var_B + eps)  (biased var_B)
/// r = sg(clip(sigma_B / sigma, 1/rmax, rmax))
/// d = sg(clip((mu_B - mu) / sigma, -dmax, dmax))
/// y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
/// mu    <- mu    + momentum * (mu_B - mu)        (after computing r, d)
/// sigma <- sigma + momentum * (sigma_B - sigma)
/// ```
///
/// `sg` is stop-gradient: the gradient flows through `mu_B` and `sigma_B`
/// as in BatchNorm, scaled by `r`. `rmax` and `dmax` follow
/// [`Schedule`]s of the step counter `n` (training batches seen); with
/// `rmax = 1, dmax = 0` the layer is BatchNorm, which is how the paper
/// starts.
///
/// Inference (`model.valid()`, a device without autodiff, or a layer
/// frozen with [`Module::freeze`], as burn's `BatchNorm`):
/// `y = gamma * (x - mu) / sigma + beta`.
///
/// The running statistic is a standard deviation, not a variance. Created
/// with [`BatchRenormConfig`](crate::BatchRenormConfig).
///
/// Everything a resumed run needs (gamma, beta, running mean and std, the
/// step counter) is in the record; see [`BatchRenorm::try_load_record`].
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct BatchRenorm {
    /// Learnable scale `gamma`, `[C]` (absent when not affine).
    pub gamma: Option<Param<Tensor<1>>>,
    /// Learnable shift `beta`, `[C]` (absent when not affine).
    pub beta: Option<Param<Tensor<1>>>,
    /// Whether training behavior is enabled (burn's `BatchNorm`'s flag:
    /// [`Module::freeze`] turns it off, [`Module::unfreeze`] on). Not
    /// saved in checkpoints.
    pub training: Param<Flag>,
    /// Running mean `mu`, `[C]`.
    pub running_mean: AveragedState<1>,
    /// Running standard deviation `sigma`, `[C]`.
    pub running_std: AveragedState<1>,
    /// Training batches seen, on the host (saved as `[1]`; it saturates at
    /// 2^24, where float32 stops counting exactly).
    pub steps: HostCounter,
    /// Number of channels `C`.
    pub num_features: usize,
    /// Weight of the batch statistics in the running ones.
    pub momentum: f64,
    /// Numerical-stability term of the standard deviation.
    pub epsilon: f64,
    /// Where `epsilon` enters the standard deviation.
    #[module(skip)]
    pub eps_placement: EpsPlacement,
    /// Update the running statistics only where the batch's are finite
    /// (see [`BatchRenormConfig::state_guard`](crate::BatchRenormConfig::state_guard)).
    pub state_guard: bool,
    /// Clip bound of `r` by step.
    #[module(skip)]
    pub rmax: Schedule,
    /// Clip bound of `|d|` by step.
    #[module(skip)]
    pub dmax: Schedule,
}

impl BatchRenorm {
    /// Normalizes `input`; training or inference mode as in burn's
    /// `BatchNorm`: training on an autodiff device unless the layer is
    /// frozen.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels, ...]`, rank 2 to 5
    /// - output: the same
    ///
    /// # Panics
    ///
    /// If the rank is outside 2..=5, the channel axis is not `num_features`
    /// long, or the batch is empty. The module's state is untouched then.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        check_input("BatchRenorm", &input.dims(), self.num_features);
        if self.is_training(&input.device()) {
            self.forward_train_step(input)
        } else {
            self.forward_inference(input)
        }
    }

    /// Normalizes a padded sequence batch: positions where `padding` is
    /// `true` are excluded from the batch statistics (they are still
    /// normalized, with the same per-channel transform). In inference mode
    /// the mask plays no role.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, channels, length]`
    /// - `padding`: `[batch_size, length]`, `true` = padding
    /// - output: `[batch_size, channels, length]`
    ///
    /// # Panics
    ///
    /// If the channel axis is not `num_features` long or the mask's shape is
    /// not `[batch_size, length]`. The module's state is untouched then.
    pub fn forward_masked(&self, input: Tensor<3>, padding: Tensor<2, Bool>) -> Tensor<3> {
        check_input("BatchRenorm", &input.dims(), self.num_features);
        check_mask("BatchRenorm", &input.dims(), &padding.dims());
        if self.is_training(&input.device()) {
            self.forward_train(masked_moments(input, padding))
        } else {
            self.forward_inference(input)
        }
    }

    /// Normalizes with the running statistics on any backend, leaving the
    /// state untouched: `y = gamma * (x - mu) / sigma + beta`.
    ///
    /// This is inference mode with gradients: on an autodiff backend they
    /// flow to `input`, `gamma` and `beta`, which is how a model is
    /// fine-tuned with frozen normalization statistics. [`forward`](Self::forward) on a
    /// backend without autodiff calls the same code.
    ///
    /// # Shapes and panics
    ///
    /// As for [`forward`](Self::forward).
    pub fn forward_frozen<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        check_input("BatchRenorm", &input.dims(), self.num_features);
        self.forward_inference(input)
    }

    /// Whether a forward pass on `device` trains: an autodiff device and a
    /// layer not frozen.
    fn is_training(&self, device: &Device) -> bool {
        bnorm_core::trains(device, &self.training)
    }

    /// The step counter `n` on the host (training batches seen).
    pub fn steps(&self) -> usize {
        self.steps.get() as usize
    }

    fn forward_train<const D: usize>(&self, batch: BatchMoments<D>) -> Tensor<D> {
        let batch_std = self.eps_placement.std(batch.var, self.epsilon);
        // On the batch's device: data-parallel replicas on several devices
        // share the state.
        let device = batch.mean.device();
        let running_mean = self.running_mean.value_sync_on(&device);
        let running_std = self.running_std.value_sync_on(&device);
        // The schedules on the host: the clip bounds are scalars.
        let step = self.steps.local();

        let correction = renorm_correction(
            batch.mean.clone(),
            batch_std.clone(),
            running_mean.clone(),
            running_std.clone(),
            self.rmax.value_at(step),
            self.dmax.value_at(step),
        );

        // y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
        //   = (x - mu_B) * (gamma * r / sigma_B) + (gamma * d + beta):
        // the per-channel factors are folded on [C] so the full-size tensor
        // sees one multiply and one add.
        let scale = correction.r.div(batch_std.clone());
        let (scale, shift) = self.affine(scale, correction.d);
        let output = batch
            .centered
            .mul(per_channel::<D>(scale))
            .add(per_channel::<D>(shift));

        self.update_running(running_mean, running_std, batch.mean, batch_std);
        output
    }

    /// Moves the running statistics towards the batch's (after `r` and `d`
    /// were computed from them), only where they are finite when the state
    /// guard is on, and counts the step.
    fn update_running(
        &self,
        running_mean: Tensor<1>,
        running_std: Tensor<1>,
        batch_mean: Tensor<1>,
        batch_std: Tensor<1>,
    ) {
        let momentum = self.momentum;
        let (batch_mean, batch_std) = (batch_mean.detach(), batch_std.detach());
        let guard = StateGuard::new(self.state_guard, &batch_mean, &batch_std);
        let blend = |old: Tensor<1>, batch: Tensor<1>| {
            let updated = old.clone().add(batch.sub(old.clone()).mul_scalar(momentum));
            guard.apply(updated, old).detach()
        };
        self.running_mean.update(blend(running_mean, batch_mean));
        self.running_std.update(blend(running_std, batch_std));
        self.steps.increment();
    }

    /// The training step as one normalization step with its gradient in
    /// closed form where the device allows it (see `bnorm_core::norm_step`:
    /// the plain batch statistics with `gamma r` and `gamma d + beta`).
    fn forward_train_step<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        // On the input's device (see `forward_train`).
        let device = input.device();
        let running_mean = self.running_mean.value_sync_on(&device);
        let running_std = self.running_std.value_sync_on(&device);
        // The schedules on the host: the clip bounds are scalars.
        let step = self.steps.local();
        let output = NormStep {
            y: input,
            gamma: self.gamma.as_ref().map(|g| g.val()),
            beta: self.beta.as_ref().map(|b| b.val()),
            statistics: StepStatistics::Plain { unbiased: false },
            epsilon: self.epsilon,
            eps_placement: self.eps_placement,
            renorm: Some(RenormTerms {
                running_mean: running_mean.clone(),
                running_std: running_std.clone(),
                rmax: self.rmax.value_at(step),
                dmax: self.dmax.value_at(step),
            }),
        }
        .run();
        self.update_running(running_mean, running_std, output.batch_mean, output.std);
        output.output
    }

    fn forward_inference<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.inference_affine().apply(input)
    }

    /// `(gamma * scale, gamma * shift + beta)`, or the inputs when not affine.
    fn affine(&self, scale: Tensor<1>, shift: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        compose_affine(
            self.gamma.as_ref().map(|g| g.val()),
            self.beta.as_ref().map(|b| b.val()),
            scale,
            shift,
        )
    }
}

impl ModuleDisplay for BatchRenorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        bnorm_core::mode::display_settings()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let content = content
            .add("num_features", &self.num_features)
            .add("momentum", &self.momentum)
            .add("epsilon", &self.epsilon)
            .add("eps_placement", &format!("{:?}", self.eps_placement))
            .add("affine", &self.gamma.is_some())
            .add("steps", &self.steps());
        bnorm_core::mode::with_training_flag(content, &self.training)
    }
}
