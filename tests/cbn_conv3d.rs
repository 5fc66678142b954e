//! `Conv3dCbn`: CBN after a burn `Conv3d` (volumes). The closed-form 3D
//! Jacobians against burn autodiff, window 1 against burn's `Conv3d` +
//! `BatchNorm`, training through a full window and resuming from a
//! checkpoint bit for bit, record mismatches, bad input, a batch of one,
//! and the conversions to and from burn's layers.

use crate::common;

use bnorm::core::moments::channel_mean;
use bnorm::core::{conv3d_moment_jacobians, Conv3dGeometry};
use bnorm::{
    BatchRenorm, BatchRenormConfig, BurnInMode, Conv3dCbn, Conv3dCbnConfig,
    CrossIterBatchNormConfig,
};
use burn::module::{Module, Param};
use burn::nn::conv::Conv3dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig3d};
use burn::tensor::module::conv3d;
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

/// A 3D conv case: input shape, weight shape `[C, C_in/G, kd, kh, kw]`,
/// geometry, bias.
type Conv3dCase = ([usize; 5], [usize; 5], Conv3dGeometry, bool);

const fn geometry(
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    groups: usize,
) -> Conv3dGeometry {
    Conv3dGeometry {
        stride,
        padding,
        dilation,
        groups,
    }
}

const CONV3D_CASES: [Conv3dCase; 5] = [
    (
        [2, 3, 4, 5, 5],
        [4, 3, 3, 3, 3],
        geometry([1, 1, 1], [1, 1, 1], [1, 1, 1], 1),
        false,
    ),
    // A batch of one (its batch sum is a reshape), stride and bias.
    (
        [1, 2, 5, 6, 4],
        [3, 2, 3, 2, 3],
        geometry([2, 1, 2], [1, 0, 1], [1, 1, 1], 1),
        true,
    ),
    // Groups, dilation along one axis.
    (
        [2, 4, 5, 5, 6],
        [6, 2, 2, 3, 3],
        geometry([1, 2, 1], [0, 2, 1], [2, 1, 2], 2),
        true,
    ),
    // Depthwise, a 1 x 3 x 3 kernel (per-slice convolution of a volume).
    (
        [1, 3, 3, 5, 5],
        [3, 1, 1, 3, 3],
        geometry([1, 1, 1], [0, 1, 1], [1, 1, 1], 3),
        false,
    ),
    // Stride 6 over 4 planes padded by 2: one output plane, whose depth
    // taps 0 and 1 read only padding (planes -2 and -1), so part of the
    // patch sum is zero.
    (
        [2, 2, 4, 4, 4],
        [3, 2, 3, 3, 3],
        geometry([6, 1, 1], [2, 1, 1], [1, 1, 1], 1),
        true,
    ),
];

/// Case `i`'s input, weight, bias and channel weights `a`, the same on
/// every backend (host data).
fn case_inputs(
    i: usize,
    (x_dims, w_dims, _, _): &Conv3dCase,
    device: &Device,
) -> (Tensor<5>, Tensor<5>, Tensor<1>, Tensor<1>) {
    let seed = i as u64;
    (
        uniform(*x_dims, 10 + seed, -1.0, 1.5, device),
        uniform(*w_dims, 20 + seed, -0.5, 0.5, device),
        uniform([w_dims[0]], 30 + seed, -0.5, 0.5, device),
        uniform([w_dims[0]], 40 + seed, 0.5, 1.5, device),
    )
}

fn case_conv(x: Tensor<5>, w: Tensor<5>, b: Option<Tensor<1>>, g: &Conv3dGeometry) -> Tensor<5> {
    conv3d(
        x,
        w,
        b,
        ConvOptions::new(g.stride, g.padding, g.dilation, g.groups),
    )
}

/// `d mean_c / dW` and `d meansq_c / dW` of a 3D conv in closed form, on
/// the device under test, equal burn autodiff's on ndarray for strides,
/// padding, dilation, groups (depthwise too), bias and a batch of one.
/// `check_matmul`: `P` is three products of 0/1 tap selections with the
/// batch-summed input, `Q` a weight-gradient convolution (TF32 on CUDA).
fn conv3d_jacobians(device: &Device) {
    for (i, case) in CONV3D_CASES.iter().enumerate() {
        let (_, w_dims, geometry, bias) = case;
        let [cout, cin_g, kd, kh, kw] = *w_dims;
        let f = cin_g * kd * kh * kw;
        // Autodiff on ndarray: gradients of sum_c a_c mean_c and of
        // sum_c a_c meansq_c with respect to W, [C, F] each.
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
        let jac = conv3d_moment_jacobians(x, y, *w_dims, *geometry);
        check_moment_jacobians(
            &format!("conv3d case {i}"),
            (jac.mean, jac.mean_sq),
            a,
            (&auto_dmu, &auto_dnu),
        );
    }
}

device_test!(conv3d_jacobians_equal_autodiff, conv3d_jacobians);

/// With window 1, BatchNorm's biased variance and the window's running
/// statistics, `Conv3dCbn` is burn's `Conv3d` + `BatchNorm`: outputs,
/// every gradient and the running statistics over three steps, and eval.
fn window_one(device: &Device) {
    let cbn = Conv3dCbnConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Same)
        .with_norm(window_one_norm())
        .init(device);
    let conv = Conv3dConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Same)
        .init(device);
    assert_window_one_is_conv_batch_norm(cbn, conv, [[2, 2, 3, 4, 4], [2, 3, 3, 4, 4]], device);
}

device_test!(conv3d_cbn_window_one_is_batch_norm, window_one);

/// The history entry a `Conv3dCbn` training step records holds the
/// Jacobians of that step's moments: per channel, autodiff's gradients of
/// `mean_c` and `meansq_c` of the block's own conv output with respect to
/// its weight. Checks that the block hands its padding (`Same`, explicit),
/// stride, dilation and groups to the Jacobians as burn's `Conv3d` applies
/// them.
fn recorded_jacobians(device: &Device) {
    let configs = [
        Conv3dCbnConfig::new([2, 3], [3, 3, 3]).with_padding(PaddingConfig3d::Same),
        Conv3dCbnConfig::new([4, 6], [3, 1, 3])
            .with_padding(PaddingConfig3d::Explicit(2, 0, 1))
            .with_stride([2, 1, 1])
            .with_dilation([1, 1, 2])
            .with_groups(2),
    ];
    for (i, config) in configs.into_iter().enumerate() {
        let c_in = config.channels[0];
        let x = uniform::<5>([1, c_in, 4, 5, 5], 70 + i as u64, -1.0, 1.5, device);
        let layer = config.with_window(3).init(device);
        assert_records_its_conv_jacobians(&format!("config {i}"), layer, x, 60 + i as u64);
    }
}

device_test!(conv3d_cbn_records_its_conv_jacobians, recorded_jacobians);

fn cbn_config() -> Conv3dCbnConfig {
    Conv3dCbnConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
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
/// steps; the outputs stay finite and the window fills.
fn resume(device: &Device) {
    // Host-data weight and bias: the same layer on every backend, and
    // nothing left to burn's lazy initialization (a clone of a module with
    // an uninitialized parameter draws its own values).
    let mut start = cbn_config().init(device);
    start.conv.weight = Param::from_tensor(uniform([3, 2, 3, 3, 3], 77, -0.3, 0.3, device));
    start.conv.bias = Some(Param::from_tensor(uniform([3], 78, -0.2, 0.2, device)));
    let outputs_finite = |layer: &Conv3dCbn, x| {
        let y = layer.forward(x);
        assert_finite("output", &y.clone().into_data());
        y
    };
    assert_resumes_bit_identically(
        || {
            cbn_config()
                .init(device)
                .load_record(start.clone().into_record())
        },
        (5, 3),
        [[1, 2, 3, 4, 4], [1, 3, 3, 4, 4]],
        outputs_finite,
        |layer, grads| layer.conv.weight.grad(grads).unwrap().into_data(),
        |first| {
            assert_eq!(first.norm.history_len(), 3, "the window is full");
            through_checkpoint(
                "cbn3d-resume",
                |path| first.clone().save_file(path).unwrap(),
                |file| cbn_config().init(device).load_checkpoint(file).unwrap(),
            )
        },
        device,
    );
}

device_test!(conv3d_cbn_resume_is_bit_identical, resume);

/// `forward_conv_output(x, conv_forward(x))` trains as `forward(x)`, bit
/// for bit (TF32 tolerance on CUDA): explicit padding and a stride of 2
/// along the height, through a ramp burn-in into a full window.
fn conv_output_given(device: &Device) {
    let config = || cbn_config().with_stride([1, 2, 1]);
    let mut start = config().init(device);
    start.conv.weight = Param::from_tensor(uniform([3, 2, 3, 3, 3], 81, -0.3, 0.3, device));
    start.conv.bias = Some(Param::from_tensor(uniform([3], 82, -0.2, 0.2, device)));
    let (direct, _) = assert_conv_output_given_is_forward(
        || {
            config()
                .init(device)
                .load_record(start.clone().into_record())
        },
        [[1, 2, 3, 4, 4], [1, 3, 3, 2, 4]],
        |layer: &Conv3dCbn, x| layer.forward_conv_output(x.clone(), layer.conv_forward(x)),
        device,
    );
    assert_eq!(direct.norm.history_len(), 3, "the window is full");
}

device_test!(conv3d_cbn_forward_conv_output_is_forward, conv_output_given);

/// A checkpoint of another window or conv shape is an error naming the
/// field; bad input panics naming expected and received shapes, and
/// leaves the state untouched.
fn mismatches(device: &Device) {
    let err = load_error(
        cbn_config().init(device),
        cbn_config().with_window(6).init(device),
    );
    assert!(
        err.contains("history.mean") && err.contains("[5, 3]") && err.contains("[3, 3]"),
        "{err}"
    );
    let record = cbn_config().init(device).into_record();
    let err = Conv3dCbnConfig::new([2, 3], [1, 3, 3])
        .init(device)
        .try_load_record(record)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv.weight"), "{err}");

    let layer = cbn_config().init(device);
    layer.forward(uniform([1, 2, 3, 4, 4], 0, -1.0, 1.0, device));
    let before = state_bytes(&layer);
    let m = panic_message(|| {
        layer.forward(uniform::<5>([1, 3, 3, 4, 4], 0, -1.0, 1.0, device));
    });
    assert!(
        m.contains("[batch_size, 2, depth, height, width]") && m.contains("[1, 3, 3, 4, 4]"),
        "{m}"
    );
    let m = panic_message(|| {
        layer.forward_conv_output(
            uniform::<5>([1, 2, 3, 4, 4], 0, -1.0, 1.0, device),
            uniform::<5>([1, 3, 1, 2, 2], 0, -1.0, 1.0, device),
        );
    });
    assert!(
        m.contains("Conv3dCbn") && m.contains("[1, 3, 3, 4, 4]") && m.contains("[1, 3, 1, 2, 2]"),
        "{m}"
    );
    // `Same` padding that would need more on one side (kernel 3, stride 2,
    // depth 4: none before, one after; depth 5 pads one on each side) is
    // named before burn's conv runs.
    let same = Conv3dCbnConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Same)
        .with_stride([2, 1, 1])
        .init(device);
    same.forward(uniform([1, 2, 5, 4, 4], 0, -1.0, 1.0, device));
    let same_before = state_bytes(&same);
    let m = panic_message(|| {
        same.forward(uniform::<5>([1, 2, 4, 4, 4], 0, -1.0, 1.0, device));
    });
    assert!(
        m.contains("Conv3dCbn")
            && m.contains("[4, 4, 4]")
            && m.contains("[[0, 1], [1, 1], [1, 1]]"),
        "{m}"
    );
    assert!(
        same_before == state_bytes(&same),
        "state changed by a rejected input"
    );
    assert!(
        before == state_bytes(&layer),
        "state changed by a rejected input"
    );
}

device_test!(conv3d_cbn_mismatches_are_clear, mismatches);

/// A batch of one with one voxel per channel (one value per channel)
/// never produces NaN, through burn-in and a full window, and eval.
fn single_voxel(device: &Device) {
    let norm = CrossIterBatchNormConfig::new(0)
        .with_window(3)
        .with_burn_in(1);
    let layer = Conv3dCbnConfig::new([2, 3], [1, 1, 1])
        .with_norm(norm)
        .init(device);
    assert_single_value_is_finite("Conv3dCbn", layer, [1, 2, 1, 1, 1], device);
}

device_test!(conv3d_cbn_single_voxel_is_finite, single_voxel);

/// From burn's `Conv3d` + `BatchNorm` with the eval output unchanged (and
/// an error naming the channels when they differ); `Conv3d` + BRN and
/// `Conv3dCbn` folded into one `Conv3d` equal to their eval output after a
/// few training steps.
fn conversions(device: &Device) {
    let inner = &device.clone().inner();
    // burn's default epsilon, as `BatchNormConfig::new`.
    let bn = trained_batch_norm(3, 1e-5, inner);
    let conv = |seed| {
        let conv = Conv3dConfig::new([2, 3], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init(inner);
        host_seeded(conv, seed)
    };
    let (conv, other) = (conv(1), conv(2));
    let x = uniform::<5>([2, 2, 3, 4, 4], 8, -1.0, 1.0, inner);
    let expected = to_vec(bn.forward(conv.forward(x.clone())));
    let cbn = Conv3dCbn::from_conv_batch_norm(conv, &bn, CrossIterBatchNormConfig::new(0)).unwrap();
    check_close(
        "Conv3dCbn from BatchNorm",
        &cbn.forward(x).into_data(),
        &[2, 3, 3, 4, 4],
        &expected,
        1e-5,
        1e-5,
    )
    .unwrap();
    let err = Conv3dCbn::from_conv_batch_norm(
        other,
        &BatchNormConfig::new(5).init(device),
        CrossIterBatchNormConfig::new(0),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("[3]") && err.to_string().contains("[5]"),
        "{err}"
    );

    // BRN after a Conv3d (rank 5) folds into it too.
    let conv = Conv3dConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .init(device);
    let conv = host_seeded(conv, 3);
    let brn: BatchRenorm = BatchRenormConfig::new(3)
        .with_steps_compressed_to(3)
        .init(device);
    for step in 0..4 {
        let _ = brn.forward(conv.forward(uniform([2, 2, 3, 4, 4], step, -1.0, 2.0, device)));
    }
    let (conv, brn) = (conv.valid(), brn.valid());
    let x = uniform::<5>([2, 2, 3, 4, 4], 9, -1.0, 2.0, inner);
    check_matmul(
        device,
        "Conv3d + BRN folded",
        &brn.fold_into_conv3d(&conv)
            .unwrap()
            .forward(x.clone())
            .into_data(),
        &[2, 3, 3, 4, 4],
        &to_vec(brn.forward(conv.forward(x))),
    )
    .unwrap();
    let err = BatchRenormConfig::new(4)
        .init(inner)
        .fold_into_conv3d(&conv)
        .unwrap_err();
    assert!(err.to_string().contains("fold_into_conv3d"), "{err}");

    let block = host_seeded(cbn_config().init(device), 4);
    for step in 0..5 {
        let _ = block.forward(uniform([2, 2, 3, 4, 4], step, -1.0, 2.0, device));
    }
    assert_eq!(block.norm.history_len(), 3);
    let block = block.valid();
    let x = uniform::<5>([2, 2, 3, 4, 4], 10, -1.0, 2.0, inner);
    check_matmul(
        device,
        "Conv3dCbn folded",
        &block.fold().forward(x.clone()).into_data(),
        &[2, 3, 3, 4, 4],
        &to_vec(block.forward(x)),
    )
    .unwrap();
}

device_test!(conv3d_cbn_conversions_keep_eval_output, conversions);
