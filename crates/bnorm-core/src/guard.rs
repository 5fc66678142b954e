//! The state guard: a training step's batch statistics update a layer's
//! state only where they are finite.
//!
//! A batch with a NaN or an infinity (an overflowing mixed-precision step,
//! a corrupt sample) gives non-finite batch statistics for the channels it
//! reaches; averaged into the running statistics, they would stay
//! non-finite for every later batch. The guard decides per channel on the
//! device, with a finiteness mask and a select, so a step costs no host
//! synchronization: where the statistics are finite the update applies,
//! elsewhere the old value stays. The step's output and gradients are what
//! they are; the caller's loss shows the problem.

use burn::tensor::{Bool, Tensor};

#[cfg(feature = "cross-iter")]
use crate::HistoryEntries;

/// One training step's guard over per-channel state updates: where the
/// step's statistics are finite the update applies, elsewhere the old
/// value stays; off, every update applies.
#[derive(Debug, Clone)]
pub struct StateGuard(Option<Tensor<1, Bool>>);

impl StateGuard {
    /// The guard for statistics `a` and `b` (each `[C]`): a channel passes
    /// where their sum is finite, so where both are, unless the sum
    /// overflows (both beyond `f32::MAX / 2`, statistics of no use either).
    /// One sum and one test: the guard runs every training step, and on
    /// small tensors its cost is its number of operations. `enabled` false
    /// lets every update through, at no cost.
    pub fn new(enabled: bool, a: &Tensor<1>, b: &Tensor<1>) -> Self {
        StateGuard(enabled.then(|| a.clone().add(b.clone()).is_finite()))
    }

    /// `updated` where the channel passes, else `old` (both `[C]`).
    pub fn apply(&self, updated: Tensor<1>, old: Tensor<1>) -> Tensor<1> {
        match &self.0 {
            Some(finite) => old.mask_where(finite.clone(), updated),
            None => updated,
        }
    }
}

/// A history entry as [`HistoryEntries::record`] makes it (`[1, C]`,
/// `[1, G, F]`, `[1, C, F]`), with every weight group that holds a
/// non-finite value replaced by an entry the window leaves out (mean 0,
/// mean of squares -1: a negative variance, however it is compensated, as
/// the compensation adds nothing to it with zero Jacobians and offsets).
///
/// Per group, not per channel: the mean Jacobian `P` is one per group, and
/// a non-finite input value reaches every channel of its group anyway.
#[cfg(feature = "cross-iter")]
pub fn guard_entry(entry: HistoryEntries) -> HistoryEntries {
    let [_, c] = entry.mean.dims();
    let [_, g, f] = entry.jac_mean.dims();
    let c_g = c / g;
    let per_channel = [
        &entry.mean,
        &entry.mean_sq,
        &entry.lin_mean,
        &entry.lin_mean_sq,
    ]
    .map(|t| t.clone().is_finite())
    .into_iter()
    .fold(
        entry
            .jac_mean_sq
            .clone()
            .is_finite()
            .all_dim(2)
            .reshape([1, c]),
        |all, next| all.bool_and(next),
    );
    let dropped_group = per_channel
        .reshape([1, g, c_g])
        .all_dim(2)
        .bool_and(entry.jac_mean.clone().is_finite().all_dim(2))
        .bool_not();
    let dropped = dropped_group.clone().repeat_dim(2, c_g).reshape([1, c]);
    let dropped_rows = dropped.clone().reshape([1, c, 1]).repeat_dim(2, f);
    HistoryEntries {
        mean: entry.mean.mask_fill(dropped.clone(), 0.0),
        mean_sq: entry.mean_sq.mask_fill(dropped.clone(), -1.0),
        jac_mean: entry
            .jac_mean
            .mask_fill(dropped_group.repeat_dim(2, f), 0.0),
        jac_mean_sq: entry.jac_mean_sq.mask_fill(dropped_rows, 0.0),
        lin_mean: entry.lin_mean.mask_fill(dropped.clone(), 0.0),
        lin_mean_sq: entry.lin_mean_sq.mask_fill(dropped, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::StateGuard;
    use burn::tensor::{Device, Tensor};

    fn guards_per_channel(device: &Device) {
        let a = Tensor::<1>::from_floats([1.0, f32::NAN, 3.0, 4.0], device);
        let b = Tensor::<1>::from_floats([1.0, 2.0, f32::INFINITY, 4.0], device);
        let old = Tensor::<1>::from_floats([-1.0, -2.0, -3.0, -4.0], device);
        let kept = StateGuard::new(true, &a, &b).apply(a.clone().add(b.clone()), old.clone());
        assert_eq!(
            kept.into_data().try_to_vec::<f32>().unwrap(),
            [2.0, -2.0, -3.0, 8.0]
        );
        let off = StateGuard::new(false, &a, &b).apply(a.clone().add(b.clone()), old);
        let sum = a.add(b).into_data().try_to_vec::<f32>().unwrap();
        let off = off.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(off[0], sum[0]);
        assert!(off[1].is_nan() && off[2] == f32::INFINITY && off[3] == sum[3]);
    }

    #[test]
    #[allow(deprecated)]
    fn guards_per_channel_ndarray() {
        guards_per_channel(&Device::ndarray());
    }

    #[test]
    fn guards_per_channel_flex() {
        guards_per_channel(&Device::flex());
    }
}
