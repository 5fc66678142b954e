//! Extreme but valid inputs: a batch of one at every rank, values whose
//! spread underflows, values near `f32::MAX / 1e3`, and a mask that hides
//! every position.

use crate::common;

use bnorm::{
    BatchRenorm, BatchRenormConfig, Conv1dCbnConfig, Conv2dCbnConfig, Conv3dCbnConfig,
    CrossIterBatchNormConfig, LinearCbnConfig,
};
use burn::tensor::{Bool, Device, Tensor};
use common::*;

/// Values in `[offset - scale, offset + scale)`.
fn values<const D: usize>(
    shape: [usize; D],
    seed: u64,
    scale: f32,
    offset: f32,
    device: &Device,
) -> Tensor<D> {
    common::random::uniform(shape, seed, offset - scale, offset + scale, device)
}

/// A small CBN window (3), full after two steps.
fn cbn_norm(channels: usize) -> CrossIterBatchNormConfig {
    CrossIterBatchNormConfig::new(channels).with_window(3)
}

/// Four training steps of `layer` on inputs from `input(step)`: the output,
/// the input's gradient and the running statistics `state()` finite at
/// every step.
fn steps_finite<const D: usize>(
    what: &str,
    input: impl Fn(u64) -> Tensor<D>,
    forward: impl Fn(Tensor<D>) -> Tensor<D>,
    state: impl Fn() -> Vec<Tensor<1>>,
) {
    for step in 0..4 {
        let x = input(step).require_grad();
        let y = forward(x.clone());
        let what = format!("{what}, step {step}");
        assert_finite(&format!("{what}: output"), &y.clone().into_data());
        let grads = y.powf_scalar(2.0).sum().backward();
        assert_finite(
            &format!("{what}: input gradient"),
            &x.grad(&grads).unwrap().into_data(),
        );
        for (i, s) in state().into_iter().enumerate() {
            assert_finite(&format!("{what}: state {i}"), &s.into_data());
        }
    }
}

/// Every layer on `input(rank, step)`-shaped data: BRN at ranks 2 to 5,
/// CBN's linear, 1D, 2D and 3D blocks (1x1 kernels, so the spatial size is
/// the input's).
fn every_layer(what: &str, scale: f32, offset: f32, batch: usize, device: &Device) {
    let c = 3;
    let brn = |_: usize| -> BatchRenorm {
        BatchRenormConfig::new(c)
            .with_steps_compressed_to(4)
            .init(device)
    };
    macro_rules! brn_rank {
        ($d:literal, $shape:expr) => {{
            let layer = brn($d);
            steps_finite(
                &format!("{what} BatchRenorm rank {}", $d),
                |s| values::<$d>($shape, s, scale, offset, device),
                |x| layer.forward(x),
                || {
                    vec![
                        layer.running_mean.value_sync(),
                        layer.running_std.value_sync(),
                    ]
                },
            );
        }};
    }
    brn_rank!(2, [batch, c]);
    brn_rank!(3, [batch, c, 1]);
    brn_rank!(4, [batch, c, 1, 1]);
    brn_rank!(5, [batch, c, 1, 1, 1]);

    let linear = LinearCbnConfig::new(2, c)
        .with_norm(cbn_norm(c))
        .init(device);
    steps_finite(
        &format!("{what} LinearCbn"),
        |s| values::<2>([batch, 2], s, scale, offset, device),
        |x| linear.forward(x),
        || {
            vec![
                linear.norm.running_mean.value_sync(),
                linear.norm.running_var.value_sync(),
            ]
        },
    );
    let conv1d = Conv1dCbnConfig::new(2, c, 1)
        .with_norm(cbn_norm(c))
        .init(device);
    steps_finite(
        &format!("{what} Conv1dCbn"),
        |s| values::<3>([batch, 2, 1], s, scale, offset, device),
        |x| conv1d.forward(x),
        || {
            vec![
                conv1d.norm.running_mean.value_sync(),
                conv1d.norm.running_var.value_sync(),
            ]
        },
    );
    let conv2d = Conv2dCbnConfig::new([2, c], [1, 1])
        .with_norm(cbn_norm(c))
        .init(device);
    steps_finite(
        &format!("{what} Conv2dCbn"),
        |s| values::<4>([batch, 2, 1, 1], s, scale, offset, device),
        |x| conv2d.forward(x),
        || {
            vec![
                conv2d.norm.running_mean.value_sync(),
                conv2d.norm.running_var.value_sync(),
            ]
        },
    );
    let conv3d = Conv3dCbnConfig::new([2, c], [1, 1, 1])
        .with_norm(cbn_norm(c))
        .init(device);
    steps_finite(
        &format!("{what} Conv3dCbn"),
        |s| values::<5>([batch, 2, 1, 1, 1], s, scale, offset, device),
        |x| conv3d.forward(x),
        || {
            vec![
                conv3d.norm.running_mean.value_sync(),
                conv3d.norm.running_var.value_sync(),
            ]
        },
    );
}

/// A batch of one value per channel (variance 0) at every rank.
fn batch_of_one_every_rank(device: &Device) {
    every_layer("batch of one", 1.0, 0.5, 1, device);
}

/// A spread of 1e-30 around 0 (its square underflows to 0) and around 1
/// (in float32 a constant): the variance is 0 and `eps` carries the
/// normalization.
fn spread_underflows(device: &Device) {
    every_layer("spread 1e-30 around 0", 1e-30, 0.0, 4, device);
    every_layer("spread 1e-30 around 1", 1e-30, 1.0, 4, device);
}

/// Values up to `f32::MAX / 1e3` (3.4e35) around 0, four samples a batch:
/// their variance (about 1e70) is beyond float32, so the standard
/// deviation is infinite. BatchRenorm and CBN's first step (no history
/// yet) give `beta` (0 here) with a zero input gradient; CBN's window
/// (`E[y^2] - E[y]^2` over the window, the paper's definition) is
/// `inf - inf` there and gives NaN. In every case the state guard leaves
/// the running statistics as they were. (See the guide.)
fn near_max(device: &Device) {
    let c = 3;
    let brn: BatchRenorm = BatchRenormConfig::new(c).init(device);
    let linear = LinearCbnConfig::new(2, c)
        .with_norm(cbn_norm(c))
        .init(device);
    for step in 0..3 {
        let x = values::<2>([4, c], step, f32::MAX / 1e3, 0.0, device).require_grad();
        let y = brn.forward(x.clone());
        assert_eq!(
            to_vec(y.clone()),
            vec![0.0; 4 * c],
            "BatchRenorm output is beta"
        );
        let grads = y.sum().backward();
        assert_eq!(to_vec(x.grad(&grads).unwrap()), vec![0.0; 4 * c]);
        assert_eq!(to_vec(brn.running_mean.value_sync()), vec![0.0; c]);
        assert_eq!(to_vec(brn.running_std.value_sync()), vec![1.0; c]);

        let x = values::<2>([4, 2], step, f32::MAX / 1e3, 0.0, device).require_grad();
        let y = linear.forward(x.clone());
        let output = to_vec(y.clone());
        let grads = y.sum().backward();
        let gradient = to_vec(x.grad(&grads).unwrap());
        if step == 0 {
            assert_eq!(output, vec![0.0; 4 * c], "CBN's first step");
            assert_eq!(gradient, vec![0.0; 4 * 2], "CBN's first step");
        } else {
            assert!(
                output.iter().all(|v| v.is_nan()),
                "CBN's window: {output:?}"
            );
        }
        assert_eq!(to_vec(linear.norm.running_mean.value_sync()), vec![0.0; c]);
        assert_eq!(to_vec(linear.norm.running_var.value_sync()), vec![1.0; c]);
        let entries = linear.norm.history.as_ref().unwrap().entries();
        assert_finite("CBN history", &entries.mean_sq.into_data());
    }
}

/// `forward_masked` with every position padding: mean 0, variance 0
/// (the count is clamped to 1), finite output, gradient and state.
fn all_masked(device: &Device) {
    let c = 3;
    let layer: BatchRenorm = BatchRenormConfig::new(c).init(device);
    let mask = Tensor::<2, Bool>::full([2, 4], true, device);
    steps_finite(
        "BatchRenorm, everything masked",
        |s| values::<3>([2, c, 4], s, 1.0, 0.5, device),
        |x| layer.forward_masked(x, mask.clone()),
        || {
            vec![
                layer.running_mean.value_sync(),
                layer.running_std.value_sync(),
            ]
        },
    );
}

device_test!(extreme_batch_of_one_every_rank, batch_of_one_every_rank);

device_test!(extreme_spread_underflows, spread_underflows);

device_test!(extreme_near_max, near_max);

device_test!(extreme_all_masked, all_masked);
