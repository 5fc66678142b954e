//! The Batch Renormalization correction (Ioffe 2017, arXiv:1702.03275).
//!
//! Batch statistics `mu_B`, `sigma_B` are corrected towards the running ones
//! `mu`, `sigma` by two per-channel factors that are treated as constants in
//! the backward pass (`sg` = stop-gradient):
//!
//! ```text
//! r = sg(clip(sigma_B / sigma, 1/rmax, rmax))
//! d = sg(clip((mu_B - mu) / sigma, -dmax, dmax))
//! y = (x - mu_B) / sigma_B * r + d
//! ```
//!
//! With `rmax = 1, dmax = 0` this is exactly BatchNorm.

use burn::config::Config;
use burn::tensor::Tensor;

/// Where the numerical-stability `epsilon` enters the standard deviation.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum EpsPlacement {
    /// `sigma = sqrt(var + eps)`: the paper's and burn `BatchNorm`'s choice.
    InsideSqrt,
    /// `sigma = sqrt(var) + eps`: what the reference implementations do
    /// (ludvb/batchrenorm, Howal's CBN without `out_p`). Use it to reproduce
    /// models trained with them.
    OnStd,
}

impl EpsPlacement {
    /// Standard deviation from a (biased or unbiased) variance, shape `[C]`.
    ///
    /// For [`EpsPlacement::OnStd`] the square root is taken of
    /// `max(var, f32::MIN_POSITIVE)`: `d sqrt(v)/dv` is infinite at `v = 0`,
    /// which a batch of one hits exactly and which would turn the backward
    /// pass into NaN (the reference's failure). The forward value is
    /// unchanged for any `eps` above 1e-19, and the gradient there is 0, its
    /// limit.
    pub fn std(self, var: Tensor<1>, epsilon: f64) -> Tensor<1> {
        match self {
            EpsPlacement::InsideSqrt => var.add_scalar(epsilon).sqrt(),
            EpsPlacement::OnStd => var
                .clamp_min(f32::MIN_POSITIVE as f64)
                .sqrt()
                .add_scalar(epsilon),
        }
    }
}

impl EpsPlacement {
    /// `d std / d var` of [`std`](Self::std) at `var`, `[C]`, with `std`
    /// its value there: `1 / (2 std)` inside the square root,
    /// `1 / (2 sqrt(var))` on the standard deviation, and 0 where
    /// `var < f32::MIN_POSITIVE` (the clamp's gradient, as burn's).
    pub fn std_derivative(self, var: Tensor<1>, std: Tensor<1>) -> Tensor<1> {
        match self {
            EpsPlacement::InsideSqrt => std.ones_like().mul_scalar(0.5).div(std),
            EpsPlacement::OnStd => {
                let clamped = var.clone().lower_elem(f32::MIN_POSITIVE as f64);
                let root = var.clamp_min(f32::MIN_POSITIVE as f64).sqrt();
                root.ones_like()
                    .mul_scalar(0.5)
                    .div(root)
                    .mask_fill(clamped, 0.0)
            }
        }
    }

    /// The variance that gives standard deviation `std` under this
    /// placement: `std^2 - eps` or `(std - eps)^2`, at least 0. Used to
    /// carry a statistic across layers with other eps conventions.
    pub fn var_for_std(self, std: Tensor<1>, epsilon: f64) -> Tensor<1> {
        match self {
            EpsPlacement::InsideSqrt => std.square().sub_scalar(epsilon),
            EpsPlacement::OnStd => std.sub_scalar(epsilon).clamp_min(0.0).square(),
        }
        .clamp_min(0.0)
    }
}

/// The detached correction factors, each of shape `[C]`.
#[derive(Debug, Clone)]
pub struct RenormCorrection {
    /// `r = clip(sigma_B / sigma, 1/rmax, rmax)`.
    pub r: Tensor<1>,
    /// `d = clip((mu_B - mu) / sigma, -dmax, dmax)`.
    pub d: Tensor<1>,
}

/// Computes `r` and `d` from the batch statistics (`[C]`, any graph: they are
/// detached here), the running ones (`[C]`) and the clip bounds `rmax`,
/// `dmax` (host scalars, e.g. [`Schedule::value_at`](crate::Schedule::value_at)
/// of the step). The clips are `min(max(., 1/rmax), rmax)` and
/// `min(max(., -dmax), dmax)`: a bound below 1 (`rmax`) or 0 (`dmax`) pins
/// the factor to it.
pub fn renorm_correction(
    batch_mean: Tensor<1>,
    batch_std: Tensor<1>,
    running_mean: Tensor<1>,
    running_std: Tensor<1>,
    rmax: f64,
    dmax: f64,
) -> RenormCorrection {
    let r = batch_std
        .detach()
        .div(running_std.clone())
        .clamp((1.0 / rmax).min(rmax), rmax);
    let d = batch_mean
        .detach()
        .sub(running_mean)
        .div(running_std)
        .clamp((-dmax).min(dmax), dmax);
    RenormCorrection {
        r: r.detach(),
        d: d.detach(),
    }
}
