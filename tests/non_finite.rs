//! The state guard: a batch with a NaN or an infinity leaves the running
//! statistics of the channels it reaches as they were.

use crate::common;

use bnorm::{BatchRenorm, BatchRenormConfig};
use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use rstest::rstest;

const CHANNELS: usize = 3;
const SHAPE: [usize; 3] = [2, CHANNELS, 4];

/// A batch in [-1.5, 2.5), `bad` written at `[0, 1, 0]` (channel 1) when
/// given.
fn batch(seed: u64, bad: Option<f32>, device: &Device) -> Tensor<3> {
    let mut values = to_vec(common::random::uniform(SHAPE, seed, -1.5, 2.5, device));
    if let Some(bad) = bad {
        values[4] = bad;
    }
    Tensor::from_data(TensorData::new(values, SHAPE), device)
}

/// The running mean and std, as bit patterns per channel.
fn brn_state(brn: &BatchRenorm) -> Vec<Vec<u32>> {
    [brn.running_mean.value_sync(), brn.running_std.value_sync()]
        .map(|t| to_vec(t).iter().map(|v| v.to_bits()).collect())
        .to_vec()
}

/// A NaN and then an infinity in channel 1: the guarded layer keeps
/// channel 1's running statistics bit for bit, updates channels 0 and 2,
/// counts the step, and a later good batch leaves everything finite. The
/// same batches without the guard leave channel 1 NaN for good.
fn brn_non_finite_batch_leaves_state(device: &Device) {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let guarded = BatchRenormConfig::new(CHANNELS)
            .with_momentum(0.5)
            .init(device);
        let _ = guarded.forward(batch(1, None, device));
        let before = brn_state(&guarded);
        let output = to_vec(guarded.forward(batch(2, Some(bad), device)));
        assert!(
            output.iter().any(|v| !v.is_finite()),
            "{bad}: the output shows the bad value"
        );
        let after = brn_state(&guarded);
        for (stat, (b, a)) in ["mean", "std"].iter().zip(before.iter().zip(&after)) {
            assert_eq!(b[1], a[1], "{bad}: running {stat} of channel 1 kept");
            assert_ne!(b[0], a[0], "{bad}: running {stat} of channel 0 updated");
            assert_ne!(b[2], a[2], "{bad}: running {stat} of channel 2 updated");
        }
        assert_eq!(guarded.step(), 2, "{bad}: the step is counted");
        let _ = guarded.forward(batch(3, None, device));
        let state = [
            guarded.running_mean.value_sync(),
            guarded.running_std.value_sync(),
        ];
        for (stat, values) in ["mean", "std"].iter().zip(state.map(to_vec)) {
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{bad}: running {stat} {values:?} finite"
            );
        }

        let unguarded = BatchRenormConfig::new(CHANNELS)
            .with_momentum(0.5)
            .with_state_guard(false)
            .init(device);
        for (seed, bad) in [(1, None), (2, Some(bad)), (3, None)] {
            let _ = unguarded.forward(batch(seed, bad, device));
        }
        let mean = to_vec(unguarded.running_mean.value_sync());
        let std = to_vec(unguarded.running_std.value_sync());
        assert!(
            !mean[1].is_finite() || !std[1].is_finite(),
            "{bad}: without the guard channel 1 is poisoned ({mean:?}, {std:?})"
        );
    }
}

#[rstest]
#[case::ndarray(TestDevice::NdArray)]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
fn brn_non_finite_batch_leaves_state_guarded(#[case] dev: TestDevice) {
    on_device!(dev, brn_non_finite_batch_leaves_state);
}
