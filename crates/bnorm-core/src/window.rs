//! Cross-Iteration BN window statistics (Yao et al. 2020, arXiv:2002.05712).
//!
//! The statistics of the current iteration `t` are averaged with those of
//! up to `k - 1` earlier iterations, each compensated to the current weight
//! (see [`crate::jacobian`]):
//!
//! ```text
//! keep_i,c = nu_i,c(W) - mu_i,c(W)^2 >= 0       (entry i dropped for channel c otherwise)
//! mu_c     = (mu_t,c + sum_i keep_i,c mu_i,c(W)) / (1 + sum_i keep_i,c)
//! var_c    = (nu_t,c + sum_i keep_i,c nu_i,c(W)) / (1 + sum_i keep_i,c) - mu_c^2
//! ```
//!
//! The current iteration is always kept: its variance is non-negative by
//! construction (the reference could drop it on a rounding error and divide
//! by zero).
//!
//! Burn-in delays or ramps how many history entries are used; all of it is
//! computed on the device from the iteration counter, so no step waits on a
//! host read.

use burn::config::Config;
use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// How the history is phased in during the first `burn_in` iterations.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BurnInMode {
    /// No history while `iteration <= burn_in`, the full window after.
    TwoStage,
    /// `floor((k - 1) * min(iteration / burn_in, 1))` history entries.
    Ramp,
}

/// How many history entries iteration `iteration` (1-based, `[1]` float)
/// may use: `0` means plain BatchNorm statistics for this step.
pub fn history_in_use<B: Backend>(
    iteration: Tensor<B, 1>,
    max_entries: usize,
    burn_in: usize,
    mode: BurnInMode,
) -> Tensor<B, 1> {
    let max = max_entries as f64;
    if burn_in == 0 {
        return iteration.zeros_like().add_scalar(max);
    }
    match mode {
        BurnInMode::TwoStage => iteration
            .greater_elem(burn_in as f64)
            .float()
            .mul_scalar(max),
        // Integer-exact: min(iteration, burn_in) * max is an exact integer in
        // float32, and one division then floors correctly for any realistic
        // burn-in (burn_in * max < 2^24).
        BurnInMode::Ramp => iteration
            .clamp_max(burn_in as f64)
            .mul_scalar(max)
            .div_scalar(burn_in as f64)
            .floor(),
    }
}

/// Float mask `[K, 1]`: 1 for history entries `0..fill` (newest first).
pub fn active_entries<B: Backend>(fill: Tensor<B, 1>, capacity: usize) -> Tensor<B, 2> {
    let index = Tensor::<B, 1, Int>::arange(0..capacity as i64, &fill.device()).float();
    index
        .lower(fill.expand([capacity]))
        .float()
        .reshape([capacity, 1])
}

/// Window mean and biased variance, `[C]` each, from the current moments
/// `[C]` and the compensated history `[K, C]` with its `[K, 1]` active mask.
pub fn window_statistics<B: Backend>(
    mean: Tensor<B, 1>,
    mean_sq: Tensor<B, 1>,
    history_mean: Tensor<B, 2>,
    history_mean_sq: Tensor<B, 2>,
    active: Tensor<B, 2>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [_, c] = history_mean.dims();
    let variance = history_mean_sq.clone().sub(history_mean.clone().square());
    let keep = variance
        .detach()
        .greater_equal_elem(0.0)
        .float()
        .mul(active);
    let count = keep.clone().sum_dim(0).reshape([c]).add_scalar(1.0);
    // A multiply by the exact reciprocal, not a division: burn's gradient of
    // `a / b` with respect to `a` uses `recip(b)`, approximate on
    // burn-ndarray with SIMD (see `reciprocal`).
    let inv_count = crate::reciprocal(count);
    let window_mean = mean
        .add(history_mean.mul(keep.clone()).sum_dim(0).reshape([c]))
        .mul(inv_count.clone());
    let window_mean_sq = mean_sq
        .add(history_mean_sq.mul(keep).sum_dim(0).reshape([c]))
        .mul(inv_count);
    let var = window_mean_sq.sub(window_mean.clone().square());
    (window_mean, var)
}

/// Pushes `entry` (`[1, ...]`) to the front of a `[K, ...]` buffer, dropping
/// the oldest, where `push` is true; keeps `buffer` bit-identical otherwise.
/// `None` pushes unconditionally, without the mask (one operation fewer per
/// buffer, for callers that know on the host that every step pushes).
pub fn push_front<B: Backend, const D: usize>(
    buffer: Tensor<B, D>,
    entry: Tensor<B, D>,
    push: Option<Tensor<B, 1, Bool>>,
) -> Tensor<B, D> {
    let dims = buffer.dims();
    let k = dims[0];
    let shifted = if k == 1 {
        entry
    } else {
        Tensor::cat(vec![entry, buffer.clone().narrow(0, 0, k - 1)], 0)
    };
    match push {
        Some(push) => {
            let mut mask_shape = [1; D];
            mask_shape[0] = 1;
            buffer.mask_where(push.reshape(mask_shape).expand(dims), shifted)
        }
        None => shifted,
    }
}
