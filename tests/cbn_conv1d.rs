//! `Conv1dCbn`: CBN after a burn `Conv1d` (signals, sequences). The
//! closed-form 1D Jacobians against burn autodiff, the Jacobians a training
//! step records against autodiff of the block's own conv, window 1 against
//! burn's `Conv1d` + `BatchNorm`, resuming from a checkpoint bit for bit,
//! record mismatches, bad input, a single value per channel, and the
//! conversions to and from burn's layers.

use crate::common;

use bnorm::core::moments::channel_mean;
use bnorm::core::{conv1d_moment_jacobians, Conv1dGeometry};
use bnorm::{
    BatchRenorm, BatchRenormConfig, BurnInMode, Conv1dCbn, Conv1dCbnConfig,
    CrossIterBatchNormConfig,
};
use burn::module::{Module, Param};
use burn::nn::conv::Conv1dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig1d};
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Device;
use burn::tensor::Tensor;
use common::blocks::{
    assert_conv_output_given_is_forward, assert_records_its_conv_jacobians,
    assert_single_value_is_finite, assert_window_one_is_conv_batch_norm, trained_batch_norm,
    window_one_norm,
};
use common::random::{host_seeded, uniform};
use common::training::{assert_resumes_bit_identically, state_bytes, through_checkpoint};
use common::*;

/// A 1D conv case: input shape, weight shape `[C, C_in/G, k]`, geometry,
/// bias.
type Conv1dCase = ([usize; 3], [usize; 3], Conv1dGeometry, bool);

const fn geometry(
    stride: usize,
    padding: [usize; 2],
    dilation: usize,
    groups: usize,
) -> Conv1dGeometry {
    Conv1dGeometry {
        stride,
        padding,
        dilation,
        groups,
    }
}

const CONV1D_CASES: [Conv1dCase; 5] = [
    ([2, 3, 9], [4, 3, 3], geometry(1, [1, 1], 1, 1), false),
    // A batch of one, stride, padding on the left only, an even kernel, bias.
    ([1, 2, 7], [3, 2, 4], geometry(2, [2, 0], 1, 1), true),
    // Groups, dilation, padding on the right only.
    ([2, 4, 10], [6, 2, 3], geometry(1, [0, 3], 2, 2), true),
    // Depthwise.
    ([1, 3, 8], [3, 1, 5], geometry(1, [2, 2], 1, 3), false),
    // Stride 6 over 4 values padded by 2 and 1: one output, whose taps 0
    // and 1 read only padding, so part of the patch sum is zero.
    ([2, 2, 4], [3, 2, 3], geometry(6, [2, 1], 1, 1), true),
];

/// Case `i`'s input, weight, bias and channel weights `a`, the same on
/// every backend (host data).
fn case_inputs(
    i: usize,
    (x_dims, w_dims, _, _): &Conv1dCase,
    device: &Device,
) -> (Tensor<3>, Tensor<3>, Tensor<1>, Tensor<1>) {
    let seed = i as u64;
    (
        uniform(*x_dims, 10 + seed, -1.0, 1.5, device),
        uniform(*w_dims, 20 + seed, -0.5, 0.5, device),
        uniform([w_dims[0]], 30 + seed, -0.5, 0.5, device),
        uniform([w_dims[0]], 40 + seed, 0.5, 1.5, device),
    )
}

fn case_conv(x: Tensor<3>, w: Tensor<3>, b: Option<Tensor<1>>, g: &Conv1dGeometry) -> Tensor<3> {
    let options = ConvOptions::new_with_padding(
        [g.stride],
        [(g.padding[0], g.padding[1])],
        [g.dilation],
        g.groups,
    );
    conv1d(x, w, b, options)
}

/// `d mean_c / dW` and `d meansq_c / dW` of a 1D conv in closed form, on
/// the device under test, equal burn autodiff's on ndarray for stride,
/// asymmetric padding, dilation, groups (depthwise too), bias and a batch
/// of one. `check_matmul`: `P` is products of 0/1 tap selections with the
/// batch-summed input, `Q` a weight-gradient convolution (TF32 on CUDA).
fn conv1d_jacobians(device: &Device) {
    for (i, case) in CONV1D_CASES.iter().enumerate() {
        let (_, w_dims, geometry, bias) = case;
        let [cout, cin_g, k] = *w_dims;
        let f = cin_g * k;
        let cpu = common::baseline();
        let (x, w0, b0, a) = case_inputs(i, case, &cpu);
        let autodiff = |square: bool| {
            let w = w0.clone().require_grad();
            let y = case_conv(x.clone(), w.clone(), bias.then(|| b0.clone()), geometry);
            let y = if square { y.square() } else { y };
            let grads = channel_mean(y).mul(a.clone()).sum().backward();
            to_vec(w.grad(&grads).unwrap().reshape([cout, f]))
        };
        let (auto_dmu, auto_dnu) = (autodiff(false), autodiff(true));

        let (x, w, b, a) = case_inputs(i, case, &device.clone().inner());
        let y = case_conv(x.clone(), w, bias.then_some(b), geometry);
        let jac = conv1d_moment_jacobians(x, y, *w_dims, *geometry);
        check_moment_jacobians(
            &format!("conv1d case {i}"),
            (jac.mean, jac.mean_sq),
            a,
            (&auto_dmu, &auto_dnu),
        );
    }
}

device_test!(conv1d_jacobians_equal_autodiff, conv1d_jacobians);

/// The history entry a `Conv1dCbn` training step records holds autodiff's
/// gradients of `mean_c` and `meansq_c` of the block's own conv output
/// with respect to its weight: the block hands its padding (`Same` with an
/// even kernel and a stride, which burn resolves to more padding at the
/// end; explicit and asymmetric), stride, dilation and groups to the
/// Jacobians as burn's `Conv1d` applies them.
fn recorded_jacobians(device: &Device) {
    let configs = [
        Conv1dCbnConfig::new(2, 3, 4)
            .with_padding(PaddingConfig1d::Same)
            .with_stride(2),
        Conv1dCbnConfig::new(4, 6, 3)
            .with_padding(PaddingConfig1d::Explicit(3, 1))
            .with_dilation(2)
            .with_groups(2),
    ];
    for (i, config) in configs.into_iter().enumerate() {
        let x = uniform::<3>([1, config.channels_in, 9], 70 + i as u64, -1.0, 1.5, device);
        let layer = config.with_window(3).init(device);
        assert_records_its_conv_jacobians(&format!("config {i}"), layer, x, 60 + i as u64);
    }
}

device_test!(conv1d_cbn_records_its_conv_jacobians, recorded_jacobians);

/// With window 1 and BatchNorm's choices, `Conv1dCbn` is burn's `Conv1d` +
/// `BatchNorm` (outputs, every gradient, running statistics, eval).
fn window_one(device: &Device) {
    let cbn = Conv1dCbnConfig::new(2, 3, 3)
        .with_padding(PaddingConfig1d::Same)
        .with_norm(window_one_norm())
        .init(device);
    let conv = Conv1dConfig::new(2, 3, 3)
        .with_padding(PaddingConfig1d::Same)
        .init(device);
    assert_window_one_is_conv_batch_norm(cbn, conv, [[2, 2, 7], [2, 3, 7]], device);
}

device_test!(conv1d_cbn_window_one_is_batch_norm, window_one);

fn cbn_config() -> Conv1dCbnConfig {
    Conv1dCbnConfig::new(2, 3, 3)
        .with_padding(PaddingConfig1d::Explicit(1, 1))
        .with_norm(
            CrossIterBatchNormConfig::new(0)
                .with_window(4)
                .with_burn_in(2)
                .with_burn_in_mode(BurnInMode::Ramp),
        )
}

/// Train n steps at batch size 1 (ramp burn-in into a full window), save,
/// load into a fresh module, train m more: outputs, gradients and every
/// state tensor (history included) bit-identical to n + m uninterrupted
/// steps.
fn resume(device: &Device) {
    let mut start = cbn_config().init(device);
    start.conv.weight = Param::from_tensor(uniform([3, 2, 3], 77, -0.3, 0.3, device));
    start.conv.bias = Some(Param::from_tensor(uniform([3], 78, -0.2, 0.2, device)));
    assert_resumes_bit_identically(
        || {
            cbn_config()
                .init(device)
                .load_record(start.clone().into_record())
        },
        (5, 3),
        [[1, 2, 12], [1, 3, 12]],
        |layer: &Conv1dCbn, x| layer.forward(x),
        |layer, grads| layer.conv.weight.grad(grads).unwrap().into_data(),
        |first| {
            assert_eq!(first.norm.history_len(), 3, "the window is full");
            through_checkpoint(
                "cbn1d-resume",
                |path| first.clone().save_file(path).unwrap(),
                |file| cbn_config().init(device).load_checkpoint(file).unwrap(),
            )
        },
        device,
    );
}

device_test!(conv1d_cbn_resume_is_bit_identical, resume);

/// `forward_conv_output(x, conv_forward(x))` trains as `forward(x)`, bit
/// for bit (TF32 tolerance on CUDA): `Same` padding of an even kernel with
/// stride 2, resolved to one pixel before and two after, through a ramp
/// burn-in into a full window.
fn conv_output_given(device: &Device) {
    let config = || {
        Conv1dCbnConfig::new(2, 3, 4)
            .with_stride(2)
            .with_padding(PaddingConfig1d::Same)
            .with_norm(cbn_config().norm)
    };
    let mut start = config().init(device);
    start.conv.weight = Param::from_tensor(uniform([3, 2, 4], 81, -0.3, 0.3, device));
    start.conv.bias = Some(Param::from_tensor(uniform([3], 82, -0.2, 0.2, device)));
    let (direct, _) = assert_conv_output_given_is_forward(
        || {
            config()
                .init(device)
                .load_record(start.clone().into_record())
        },
        [[2, 2, 9], [2, 3, 5]],
        |layer: &Conv1dCbn, x| layer.forward_conv_output(x.clone(), layer.conv_forward(x)),
        device,
    );
    assert_eq!(direct.norm.history_len(), 3, "the window is full");
}

device_test!(conv1d_cbn_forward_conv_output_is_forward, conv_output_given);

/// A checkpoint of another window or conv shape is an error naming the
/// field; bad input panics naming expected and received shapes and leaves
/// the state untouched; a single value per channel (batch of one, length
/// one) stays finite through burn-in and a full window, and in eval.
fn mismatches_and_single_value(device: &Device) {
    let err = load_error(
        cbn_config().init(device),
        cbn_config().with_window(6).init(device),
    );
    assert!(
        err.contains("history.mean") && err.contains("[5, 3]") && err.contains("[3, 3]"),
        "{err}"
    );
    let record = cbn_config().init(device).into_record();
    let err = Conv1dCbnConfig::new(2, 3, 5)
        .init(device)
        .try_load_record(record)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv.weight"), "{err}");

    let layer = cbn_config().init(device);
    layer.forward(uniform([1, 2, 6], 0, -1.0, 1.0, device));
    let before = state_bytes(&layer);
    let m = panic_message(|| {
        layer.forward(uniform::<3>([1, 3, 6], 0, -1.0, 1.0, device));
    });
    assert!(
        m.contains("[batch_size, 2, length]") && m.contains("[1, 3, 6]"),
        "{m}"
    );
    let m = panic_message(|| {
        layer.forward_conv_output(
            uniform::<3>([1, 2, 6], 0, -1.0, 1.0, device),
            uniform::<3>([1, 3, 4], 0, -1.0, 1.0, device),
        );
    });
    assert!(
        m.contains("Conv1dCbn") && m.contains("[1, 3, 6]") && m.contains("[1, 3, 4]"),
        "{m}"
    );
    assert!(
        before == state_bytes(&layer),
        "state changed by a rejected input"
    );

    let norm = CrossIterBatchNormConfig::new(0)
        .with_window(3)
        .with_burn_in(1);
    let layer = Conv1dCbnConfig::new(2, 3, 1).with_norm(norm).init(device);
    assert_single_value_is_finite("Conv1dCbn", layer, [1, 2, 1], device);
}

device_test!(
    conv1d_cbn_mismatches_and_single_value,
    mismatches_and_single_value
);

/// From burn's `Conv1d` + `BatchNorm` with the eval output unchanged (and
/// an error naming the channels when they differ); `Conv1d` + BRN and
/// `Conv1dCbn` folded into one `Conv1d` equal to their eval output after a
/// few training steps.
fn conversions(device: &Device) {
    let inner = &device.clone().inner();
    // burn's default epsilon, as `BatchNormConfig::new`.
    let bn = trained_batch_norm(3, 1e-5, inner);
    let conv = |seed| {
        let conv = Conv1dConfig::new(2, 3, 3)
            .with_padding(PaddingConfig1d::Explicit(1, 1))
            .init(inner);
        host_seeded(conv, seed)
    };
    let (conv, other) = (conv(1), conv(2));
    let x = uniform::<3>([2, 2, 8], 8, -1.0, 1.0, inner);
    let expected = to_vec(bn.forward(conv.forward(x.clone())));
    let cbn = Conv1dCbn::from_conv_batch_norm(conv, &bn, CrossIterBatchNormConfig::new(0)).unwrap();
    check_close(
        "Conv1dCbn from BatchNorm",
        &cbn.forward(x).into_data(),
        &[2, 3, 8],
        &expected,
        1e-5,
        1e-5,
    )
    .unwrap();
    let err = Conv1dCbn::from_conv_batch_norm(
        other,
        &BatchNormConfig::new(5).init(device),
        CrossIterBatchNormConfig::new(0),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("[3]") && err.to_string().contains("[5]"),
        "{err}"
    );

    let conv = Conv1dConfig::new(2, 3, 3)
        .with_padding(PaddingConfig1d::Explicit(1, 1))
        .init(device);
    let conv = host_seeded(conv, 3);
    let brn: BatchRenorm = BatchRenormConfig::new(3)
        .with_steps_compressed_to(3)
        .init(device);
    for step in 0..4 {
        let _ = brn.forward(conv.forward(uniform([2, 2, 8], step, -1.0, 2.0, device)));
    }
    let (conv, brn) = (conv.valid(), brn.valid());
    let x = uniform::<3>([2, 2, 8], 9, -1.0, 2.0, inner);
    check_matmul(
        device,
        "Conv1d + BRN folded",
        &brn.fold_into_conv1d(&conv)
            .unwrap()
            .forward(x.clone())
            .into_data(),
        &[2, 3, 8],
        &to_vec(brn.forward(conv.forward(x))),
    )
    .unwrap();
    let err = BatchRenormConfig::new(4)
        .init(inner)
        .fold_into_conv1d(&conv)
        .unwrap_err();
    assert!(err.to_string().contains("fold_into_conv1d"), "{err}");

    let block = host_seeded(cbn_config().init(device), 4);
    for step in 0..5 {
        let _ = block.forward(uniform([2, 2, 8], step, -1.0, 2.0, device));
    }
    assert_eq!(block.norm.history_len(), 3);
    let block = block.valid();
    let x = uniform::<3>([2, 2, 8], 10, -1.0, 2.0, inner);
    check_matmul(
        device,
        "Conv1dCbn folded",
        &block.fold().forward(x.clone()).into_data(),
        &[2, 3, 8],
        &to_vec(block.forward(x)),
    )
    .unwrap();
}

device_test!(conv1d_cbn_conversions_keep_eval_output, conversions);
