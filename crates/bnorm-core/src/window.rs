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
//! the step count, which the layer keeps on the host
//! ([`HostCounter`](crate::HostCounter)), so a burn-in step is plain
//! BatchNorm with no window work at all.

use burn::config::Config;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::backend::{backend, BackendKind};
use crate::shape::sum_axis;
use crate::CompensatedMoments;

/// How the history is phased in during the first `burn_in` training steps.
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
pub struct WindowHistory {
    /// The entries' moments, compensated to the current weight.
    pub moments: CompensatedMoments,
    /// How many entries, from the front, hold data.
    pub filled: usize,
}

/// Window mean and biased variance, `[C]` each, from the current moments
/// `[C]` and the compensated history (`None` while it holds no entry: the
/// window is the current iteration alone).
pub fn window_statistics(
    mean: Tensor<1>,
    mean_sq: Tensor<1>,
    history: Option<WindowHistory>,
) -> (Tensor<1>, Tensor<1>) {
    let Some(history) = history else {
        let var = mean_sq.sub(mean.clone().square());
        return (mean, var);
    };
    let window = window_with_weights(mean, mean_sq, history);
    (window.mean, window.var)
}

/// [`window_statistics`] of a window holding entries, with the weights
/// the closed-form gradient needs (`crate::closed_form`).
#[derive(Debug, Clone)]
pub(crate) struct WeightedWindow {
    /// Window mean, `[C]`.
    pub mean: Tensor<1>,
    /// Window biased variance, `[C]`.
    pub var: Tensor<1>,
    /// 1 where entry `i` is kept for channel `c`, else 0, `[K, C]`.
    pub keep: Tensor<2>,
    /// `sum_i keep_i` (`n - 1`), `[1, C]`.
    pub kept: Tensor<2>,
    /// `1 / n`, `n` the values averaged per channel, `[C]`.
    pub inv_count: Tensor<1>,
}

pub(crate) fn window_with_weights(
    mean: Tensor<1>,
    mean_sq: Tensor<1>,
    WindowHistory { moments, filled }: WindowHistory,
) -> WeightedWindow {
    let CompensatedMoments {
        mean: history_mean,
        mean_sq: history_mean_sq,
    } = moments;
    let [k, c] = history_mean.dims();
    let variance = history_mean_sq.clone().sub(history_mean.clone().square());
    // 1 where kept, else 0, as a masked fill of zeros: burn's fusion merges
    // it into the kernel that computes the variance, where a bool-to-float
    // cast is a kernel of its own.
    let variance = variance.detach();
    let kept = variance.clone().greater_equal_elem(0.0);
    let mut keep = variance.zeros_like().mask_fill(kept, 1.0);
    if filled < k {
        // Same shapes at every fill (on a GPU a new shape compiles and
        // tunes new kernels): the unfilled entries are masked out.
        let active = (0..k).map(|i| if i < filled { 1.0f32 } else { 0.0 });
        let active = TensorData::new(active.collect::<Vec<_>>(), [k, 1]);
        keep = keep.mul(Tensor::from_data(active, &mean.device()));
    }
    // Per-channel values stay `[1, C]` until the end: burn's fusion does
    // not merge a sum over the entries with what follows across a reshape
    // of the sum.
    let row = |t: Tensor<1>| t.reshape([1, c]);
    let kept = sum_axis(keep.clone(), 0);
    let count = kept.clone().add_scalar(1.0);
    // A multiply by the exact reciprocal, not a division: burn's gradient of
    // `a / b` with respect to `a` uses `recip(b)`, approximate on
    // burn-ndarray with SIMD (see `reciprocal`).
    let inv_count = crate::reciprocal(count);
    let window_mean = row(mean)
        .add(sum_axis(history_mean.mul(keep.clone()), 0))
        .mul(inv_count.clone());
    let window_mean_sq = row(mean_sq)
        .add(sum_axis(history_mean_sq.mul(keep.clone()), 0))
        .mul(inv_count.clone());
    let var = window_mean_sq.sub(window_mean.clone().square());
    let [window_mean, var, inv_count] = [window_mean, var, inv_count].map(|t| t.reshape([c]));
    WeightedWindow {
        mean: window_mean,
        var,
        keep,
        kept,
        inv_count,
    }
}

/// Pushes entries to the front of `[K, ...]` buffers, dropping the oldest
/// (`cat([entry, buffer[..K - 1]])`). On a GPU as a row gather and a masked
/// select: elementwise work that burn's fusion merges into one kernel for
/// several buffers of a shape, where `Tensor::cat` launches a slice
/// assignment per input (a window of 8 on wgpu: 12 kernels for the
/// history's six buffers, 2 this way). On burn's CPU backends, which run
/// every operation on its own, as the concatenation itself: one copy of
/// each buffer instead of a gather, a mask and a select over it. Bit for bit
/// the same buffers either way. Keep one and its masks for pushes every
/// step: made anew, they are uploads every step.
#[derive(Debug, Clone)]
pub struct FrontPush {
    /// `[0, 0, 1, ..., K - 2]`: the row of the old buffer each new row
    /// takes (row 0 is then replaced by the entry).
    shift: Tensor<1, Int>,
    /// `[true, false, ..., false]`: the row the entry goes to.
    front: Tensor<1, Bool>,
    /// Whether pushes concatenate (burn's CPU backends) rather than gather
    /// and mask.
    concatenate: bool,
}

impl FrontPush {
    /// For buffers of `capacity` (`K >= 1`) entries on `device`.
    pub fn new(capacity: usize, device: &Device) -> Self {
        let cpu = matches!(
            backend(device),
            Some(BackendKind::NdArray | BackendKind::Flex)
        );
        Self::with_route(capacity, device, cpu)
    }

    fn with_route(capacity: usize, device: &Device, concatenate: bool) -> Self {
        let shift: Vec<i64> = (0..capacity as i64).map(|i| (i - 1).max(0)).collect();
        let front: Vec<bool> = (0..capacity).map(|i| i == 0).collect();
        FrontPush {
            shift: Tensor::from_data(TensorData::new(shift, [capacity]), device),
            front: Tensor::from_data(TensorData::new(front, [capacity]), device),
            concatenate,
        }
    }

    /// The device the tensors are on.
    pub fn device(&self) -> Device {
        self.shift.device()
    }

    /// The mask a push into a buffer of shape `dims` (`[K, ...]`) takes.
    /// Make every buffer's mask before the first push: the views come from
    /// operations burn's fusion does not merge, and would otherwise split
    /// the pushes into one kernel each.
    pub fn mask<const D: usize>(&self, dims: [usize; D]) -> Tensor<D, Bool> {
        let mut column = [1; D];
        column[0] = dims[0];
        self.front.clone().reshape(column).expand(dims)
    }

    /// `entry` (`[1, ...]`) pushed to the front of `buffer` (`[K, ...]`),
    /// the oldest entry dropped; `mask` from [`mask`](Self::mask).
    pub fn push<const D: usize>(
        &self,
        buffer: Tensor<D>,
        entry: Tensor<D>,
        mask: Tensor<D, Bool>,
    ) -> Tensor<D> {
        if !self.concatenate {
            return buffer.select(0, self.shift.clone()).mask_where(mask, entry);
        }
        let kept = buffer.dims()[0] - 1;
        if kept == 0 {
            entry
        } else {
            Tensor::cat(vec![entry, buffer.narrow(0, 0, kept)], 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{history_in_use, BurnInMode, FrontPush};
    use crate::test_bits::bits;
    use burn::tensor::{Distribution, Tensor};

    /// A push is `cat([entry, buffer[..K - 1]])` bit for bit, by either
    /// route, for every capacity from 1 and buffers of rank 2 and 3, over
    /// several pushes with the same `FrontPush` and masks (as the history
    /// keeps them).
    #[test]
    fn front_push_is_a_concatenation() {
        let device = crate::test_bits::autodiff_device();
        assert!(FrontPush::new(2, &device).concatenate, "a CPU device");
        let random =
            |dims: [usize; 3]| Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        for (k, concatenate) in [1, 2, 5].into_iter().flat_map(|k| [(k, false), (k, true)]) {
            let front = FrontPush::with_route(k, &device, concatenate);
            let mask3 = front.mask([k, 3, 4]);
            let mask2 = front.mask([k, 3]);
            let mut buffer3 = random([k, 3, 4]);
            let mut buffer2 = random([k, 3, 1]).reshape([k, 3]);
            for step in 0..3 {
                let entry3 = random([1, 3, 4]);
                let entry2 = random([1, 3, 1]).reshape([1, 3]);
                let expected3 =
                    Tensor::cat(vec![entry3.clone(), buffer3.clone()], 0).narrow(0, 0, k);
                let expected2 =
                    Tensor::cat(vec![entry2.clone(), buffer2.clone()], 0).narrow(0, 0, k);
                buffer3 = front.push(buffer3, entry3, mask3.clone());
                buffer2 = front.push(buffer2, entry2, mask2.clone());
                let case = format!("capacity {k}, push {step}, concatenate {concatenate}");
                assert_eq!(buffer3.dims(), [k, 3, 4], "{case}");
                assert_eq!(bits(buffer3.clone()), bits(expected3), "{case}");
                assert_eq!(bits(buffer2.clone()), bits(expected2), "{case}, rank 2");
            }
        }
    }

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
