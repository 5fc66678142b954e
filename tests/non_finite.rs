//! The state guard: a batch with a NaN or an infinity leaves the running
//! statistics (and CBN's history) of the channels it reaches as they were.

use crate::common;

use bnorm::{BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor, TensorData};
use common::*;

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
        assert_eq!(guarded.steps(), 2, "{bad}: the step is counted");
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

device_test!(
    brn_non_finite_batch_leaves_state_guarded,
    brn_non_finite_batch_leaves_state
);

/// `[2, 2, 3, 3]` inputs in [-1.5, 2.5), `bad` written into input channel
/// 0 (which reaches output group 0 only) when given.
fn image(seed: u64, bad: Option<f32>, device: &Device) -> Tensor<4> {
    let shape = [2, 2, 3, 3];
    let mut values = to_vec(common::random::uniform(shape, seed, -1.5, 2.5, device));
    if let Some(bad) = bad {
        values[4] = bad;
    }
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A `Conv2dCbn` (2 groups, 4 output channels, window 3) after `steps`
/// training steps on the inputs `image(seed, bad)`.
fn trained_cbn(guard: bool, steps: &[(u64, Option<f32>)], device: &Device) -> Conv2dCbn {
    let block = Conv2dCbnConfig::new([2, 4], [3, 3])
        .with_groups(2)
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_norm(
            CrossIterBatchNormConfig::new(4)
                .with_window(3)
                .with_momentum(0.5)
                .with_state_guard(guard),
        )
        .init(device);
    for &(seed, bad) in steps {
        let _ = block.forward(image(seed, bad, device)).sum().backward();
    }
    block
}

/// Every float of the layer's running statistics and history, by name.
fn cbn_state(block: &Conv2dCbn) -> Vec<(&'static str, Vec<f32>)> {
    let norm = &block.norm;
    let history = norm.history.as_ref().expect("window 3 keeps a history");
    let entries = history.entries();
    vec![
        ("running mean", to_vec(norm.running_mean.value_sync())),
        ("running var", to_vec(norm.running_var.value_sync())),
        ("history mean", to_vec(entries.mean)),
        ("history mean_sq", to_vec(entries.mean_sq)),
        ("history jac_mean", to_vec(entries.jac_mean)),
        ("history jac_mean_sq", to_vec(entries.jac_mean_sq)),
        ("history lin_mean", to_vec(entries.lin_mean)),
        ("history lin_mean_sq", to_vec(entries.lin_mean_sq)),
    ]
}

/// A NaN or an infinity reaching output group 0 (channels 0 and 1): the
/// guarded layer keeps those channels' running statistics bit for bit,
/// updates group 1's, records an entry the window leaves out for group 0
/// (mean 0, mean of squares -1) and a real one for group 1, keeps every
/// state value finite, and its next steps' outputs are finite. Without the
/// guard the history carries the bad value and later outputs are not
/// finite.
fn cbn_non_finite_batch_leaves_state(device: &Device) {
    for bad in [f32::NAN, f32::INFINITY] {
        let block = trained_cbn(true, &[(1, None), (2, None)], device);
        let before = cbn_state(&block);
        let _ = block.forward(image(3, Some(bad), device)).sum().backward();
        let after = cbn_state(&block);
        for ((name, b), (_, a)) in before.iter().zip(&after).take(2) {
            for c in 0..2 {
                assert_eq!(b[c].to_bits(), a[c].to_bits(), "{bad}: {name}[{c}] kept");
            }
            for c in 2..4 {
                assert_ne!(b[c].to_bits(), a[c].to_bits(), "{bad}: {name}[{c}] updated");
            }
        }
        for (name, values) in &after {
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{bad}: {name} finite: {values:?}"
            );
        }
        // The newest entry is row 0 of the `[K, C]` buffers.
        let (mean, mean_sq) = (&after[2].1, &after[3].1);
        assert_eq!(&mean[..2], &[0.0, 0.0], "{bad}: dropped entry's mean");
        assert_eq!(
            &mean_sq[..2],
            &[-1.0, -1.0],
            "{bad}: dropped entry's mean_sq"
        );
        assert!(
            mean_sq[2] - mean[2] * mean[2] >= 0.0 && mean_sq[3] - mean[3] * mean[3] >= 0.0,
            "{bad}: group 1's entry is a real one: {mean:?} {mean_sq:?}"
        );
        assert_eq!(block.norm.steps(), 3, "{bad}: the step is counted");
        for seed in [4, 5] {
            let output = to_vec(block.forward(image(seed, None, device)));
            assert!(
                output.iter().all(|v| v.is_finite()),
                "{bad}: output after the bad step finite"
            );
        }

        let unguarded = trained_cbn(false, &[(1, None), (2, None), (3, Some(bad))], device);
        let output = to_vec(unguarded.forward(image(4, None, device)));
        assert!(
            output.iter().any(|v| !v.is_finite()),
            "{bad}: without the guard the history poisons later steps"
        );
    }
}

device_test!(
    cbn_non_finite_batch_leaves_state_guarded,
    cbn_non_finite_batch_leaves_state
);
