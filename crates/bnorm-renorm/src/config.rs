use bnorm_core::AveragedState;
use burn::config::Config;
use burn::module::{Initializer, Param};
use burn::tensor::{Device, Tensor};

use bnorm_core::{EpsPlacement, HostCounter, Schedule};

use crate::BatchRenorm;

/// Configuration of a [`BatchRenorm`] layer.
///
/// ```
/// # use bnorm_renorm::{BatchRenormConfig, Schedule};
/// // The paper's schedule compressed into a 2000-step run.
/// let config = BatchRenormConfig::new(64).with_steps_compressed_to(2000);
/// assert_eq!(config.rmax.final_step(), 2000.0);
/// ```
#[derive(Config, Debug)]
pub struct BatchRenormConfig {
    /// Number of channels `C` of the `[N, C, ...]` input.
    pub num_features: usize,
    /// Added to the variance (or the standard deviation, see
    /// `eps_placement`) for numerical stability. Default: 1e-3 (the
    /// reference implementation's).
    #[config(default = 1e-3)]
    pub epsilon: f64,
    /// Weight of the current batch in the running statistics:
    /// `running += momentum * (batch - running)`. Default: 0.01 (the
    /// paper's; the running statistics take part in training, so they must
    /// move slowly).
    #[config(default = 0.01)]
    pub momentum: f64,
    /// Learnable per-channel scale `gamma` and shift `beta`. Default: true.
    #[config(default = true)]
    pub affine: bool,
    /// Upper clip bound of `r` as a function of the step. Default: the
    /// paper's, 1 until step 5000 then linear to 3 at step 40000.
    #[config(default = "Schedule::paper_rmax()")]
    pub rmax: Schedule,
    /// Clip bound of `|d|` as a function of the step. Default: the paper's,
    /// 0 until step 5000 then linear to 5 at step 25000.
    #[config(default = "Schedule::paper_dmax()")]
    pub dmax: Schedule,
    /// Where `epsilon` enters the standard deviation. Default:
    /// [`EpsPlacement::InsideSqrt`], `sqrt(var + eps)` as in the paper and
    /// burn's `BatchNorm`; [`EpsPlacement::OnStd`] reproduces the reference
    /// implementation (ludvb/batchrenorm).
    #[config(default = "EpsPlacement::InsideSqrt")]
    pub eps_placement: EpsPlacement,
    /// Update the running statistics only where the batch's are finite
    /// (see [`bnorm_core::guard`]): a batch with a NaN or an infinity
    /// leaves the running mean and std of the channels it reaches as they
    /// were. The step counter still counts the step (it is kept on the
    /// host, and a per-channel decision on the device costs no
    /// synchronization), so the `rmax` / `dmax` schedules move on. Default:
    /// true.
    #[config(default = true)]
    pub state_guard: bool,
}

impl BatchRenormConfig {
    /// Compresses the `rmax` and `dmax` schedules so that the paper's ramps
    /// (which end at step 40000) end at `total_steps` instead: every
    /// breakpoint step is scaled by `total_steps / 40000`, the values stay.
    /// With the defaults, `rmax` then ramps from `total_steps / 8` to
    /// `total_steps` and `dmax` from `total_steps / 8` to `5 * total_steps / 8`.
    ///
    /// `momentum` is left alone. The running statistics average over about
    /// `1 / momentum` steps; for a run of a few hundred steps the default
    /// 0.01 leaves them stale when `r` and `d` start to act, so raise it
    /// (the small-batch demo uses `max(0.01, 20 / total_steps)`).
    pub fn with_steps_compressed_to(self, total_steps: usize) -> Self {
        let end = self.rmax.final_step().max(self.dmax.final_step());
        let factor = total_steps as f64 / end;
        let rmax = self.rmax.compressed(factor);
        let dmax = self.dmax.compressed(factor);
        self.with_rmax(rmax).with_dmax(dmax)
    }

    /// Initializes a [`BatchRenorm`] layer: `gamma = 1`, `beta = 0`, running
    /// mean 0, running std 1, step counter 0.
    ///
    /// # Panics
    ///
    /// If `num_features` is 0, `momentum` is outside `[0, 1]` or `epsilon`
    /// is negative.
    pub fn init(&self, device: &Device) -> BatchRenorm {
        let c = self.num_features;
        assert!(c > 0, "BatchRenormConfig: num_features must be positive");
        assert!(
            (0.0..=1.0).contains(&self.momentum),
            "BatchRenormConfig: momentum must be in [0, 1], received {}",
            self.momentum
        );
        assert!(
            self.epsilon >= 0.0,
            "BatchRenormConfig: epsilon must not be negative, received {}",
            self.epsilon
        );
        let affine = |init: Initializer| -> Option<Param<Tensor<1>>> {
            self.affine.then(|| init.init([c], device))
        };
        BatchRenorm {
            gamma: affine(Initializer::Ones),
            beta: affine(Initializer::Zeros),
            training: Param::from_bool(true),
            running_mean: AveragedState::new(Tensor::zeros([c], device)),
            running_std: AveragedState::new(Tensor::ones([c], device)),
            steps: HostCounter::new(device),
            num_features: c,
            momentum: self.momentum,
            epsilon: self.epsilon,
            eps_placement: self.eps_placement,
            state_guard: self.state_guard,
            rmax: self.rmax.clone(),
            dmax: self.dmax.clone(),
        }
    }
}
