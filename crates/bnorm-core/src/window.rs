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
//! Burn-in delays or ramps how many history entries are used: a function of
//! the iteration count, which the layer keeps on the host
//! ([`HostCounter`](crate::HostCounter)), so a burn-in step is plain
//! BatchNorm with no window work at all.

use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::CompensatedMoments;

/// How the history is phased in during the first `burn_in` iterations.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BurnInMode {
    /// No history while `iteration <= burn_in`, the full window after.
    TwoStage,
    /// `floor((k - 1) * min(iteration / burn_in, 1))` history entries.
    Ramp,
}

/// How many history entries iteration `iteration` (1-based) may use: `0`
/// means plain BatchNorm statistics for this step.
pub fn history_in_use(
    iteration: usize,
    max_entries: usize,
    burn_in: usize,
    mode: BurnInMode,
) -> usize {
    if burn_in == 0 {
        return max_entries;
    }
    match mode {
        BurnInMode::TwoStage if iteration > burn_in => max_entries,
        BurnInMode::TwoStage => 0,
        BurnInMode::Ramp => max_entries * iteration.min(burn_in) / burn_in,
    }
}

/// The compensated history of a window step: all `K` entries of the
/// buffers (`[K, C]` each), of which the first `filled` (newest first, at
/// least one) hold data.
#[derive(Debug, Clone)]
pub struct WindowHistory<B: Backend> {
    /// The entries' moments, compensated to the current weight.
    pub moments: CompensatedMoments<B>,
    /// How many entries, from the front, hold data.
    pub filled: usize,
}

/// Window mean and biased variance, `[C]` each, from the current moments
/// `[C]` and the compensated history (`None` while it holds no entry: the
/// window is the current iteration alone).
pub fn window_statistics<B: Backend>(
    mean: Tensor<B, 1>,
    mean_sq: Tensor<B, 1>,
    history: Option<WindowHistory<B>>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let Some(WindowHistory { moments, filled }) = history else {
        let var = mean_sq.sub(mean.clone().square());
        return (mean, var);
    };
    let CompensatedMoments {
        mean: history_mean,
        mean_sq: history_mean_sq,
    } = moments;
    let [k, c] = history_mean.dims();
    let variance = history_mean_sq.clone().sub(history_mean.clone().square());
    let mut keep = variance.detach().greater_equal_elem(0.0).float();
    if filled < k {
        // Same shapes at every fill (on a GPU a new shape compiles and
        // tunes new kernels): the unfilled entries are masked out.
        let active = (0..k).map(|i| if i < filled { 1.0f32 } else { 0.0 });
        let active = TensorData::new(active.collect::<Vec<_>>(), [k, 1]);
        keep = keep.mul(Tensor::from_data(active, &mean.device()));
    }
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

/// Pushes `entry` (`[1, ...]`) to the front of a `[K, ...]` buffer,
/// dropping the oldest.
pub fn push_front<B: Backend, const D: usize>(
    buffer: Tensor<B, D>,
    entry: Tensor<B, D>,
) -> Tensor<B, D> {
    let k = buffer.dims()[0];
    if k == 1 {
        entry
    } else {
        Tensor::cat(vec![entry, buffer.narrow(0, 0, k - 1)], 0)
    }
}

#[cfg(test)]
mod tests {
    use super::{history_in_use, BurnInMode};

    /// The integer forms equal the definitions: two-stage is nothing while
    /// `iteration <= burn_in`, everything after; the ramp is
    /// `floor((k - 1) * min(iteration / burn_in, 1))`.
    #[test]
    fn history_in_use_follows_the_burn_in_definitions() {
        for max in [1, 3, 7] {
            for burn_in in [1, 2, 5, 100] {
                for iteration in 1..3 * burn_in {
                    let two_stage = if iteration > burn_in { max } else { 0 };
                    let fraction = (iteration as f64 / burn_in as f64).min(1.0);
                    let ramp = (max as f64 * fraction).floor() as usize;
                    let case = format!("max {max} burn_in {burn_in} iteration {iteration}");
                    let got = |mode| history_in_use(iteration, max, burn_in, mode);
                    assert_eq!(got(BurnInMode::TwoStage), two_stage, "{case}");
                    assert_eq!(got(BurnInMode::Ramp), ramp, "{case}");
                    assert_eq!(history_in_use(iteration, max, 0, BurnInMode::Ramp), max);
                }
            }
        }
    }
}
