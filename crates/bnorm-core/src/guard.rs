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

/// `true` per channel where every one of `statistics` (each `[C]`) is
/// finite.
pub fn finite_channels(statistics: &[&Tensor<1>]) -> Tensor<1, Bool> {
    let mut finite = statistics.iter().map(|s| (*s).clone().is_finite());
    let first = finite.next().expect("at least one statistic to check");
    finite.fold(first, |all, next| all.bool_and(next))
}

/// `updated` where `finite`, else `old` (all `[C]`).
pub fn keep_where_not_finite(
    finite: &Tensor<1, Bool>,
    updated: Tensor<1>,
    old: Tensor<1>,
) -> Tensor<1> {
    updated.mask_where(finite.clone().bool_not(), old)
}

#[cfg(test)]
mod tests {
    use super::{finite_channels, keep_where_not_finite};
    use burn::tensor::{Device, Tensor};

    fn guards_per_channel(device: &Device) {
        let a = Tensor::<1>::from_floats([1.0, f32::NAN, 3.0, 4.0], device);
        let b = Tensor::<1>::from_floats([1.0, 2.0, f32::INFINITY, 4.0], device);
        let finite = finite_channels(&[&a, &b]);
        assert_eq!(
            finite.clone().into_data().try_to_vec::<bool>().unwrap(),
            [true, false, false, true]
        );
        let old = Tensor::<1>::from_floats([-1.0, -2.0, -3.0, -4.0], device);
        let kept = keep_where_not_finite(&finite, a.add(b), old);
        assert_eq!(
            kept.into_data().try_to_vec::<f32>().unwrap(),
            [2.0, -2.0, -3.0, 8.0]
        );
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
