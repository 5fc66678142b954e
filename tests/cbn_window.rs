//! Cross-Iteration BN's window: window 1 is BatchNorm, negative-variance
//! entries are dropped per channel, a window step equals its formulas, a
//! batch of one stays finite, gradient accumulation pools the effective
//! batch, sequences, and the history's memory.

use crate::common;

use bnorm::core::compensation::CompensatedMoments;
use bnorm::core::moments::{bessel, channel_mean, moments, values_per_channel};
use bnorm::core::window::{window_statistics, WindowHistory};
use bnorm::{Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig, EpsPlacement, LinearCbnConfig};
use bnorm_crossiter::RunningStatistics;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::optim::{GradientsAccumulator, GradientsParams, SgdConfig};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Device;
use burn::tensor::{Tensor, TensorData};
use common::blocks::{
    assert_single_value_is_finite, assert_window_one_is_conv_batch_norm, window_one_norm,
};
use common::random::{host_seeded, uniform};
use common::*;

/// With window 1, biased variance, eps inside the root and window running
/// statistics, `Conv2dCbn` is burn's `Conv2d` + `BatchNorm`: outputs, every
/// gradient and the running statistics.
fn window_one(device: &Device) {
    let cbn = Conv2dCbnConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_norm(window_one_norm())
        .init(device);
    let conv = Conv2dConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device);
    assert_window_one_is_conv_batch_norm(cbn, conv, [[2, 3, 5, 5], [2, 4, 5, 5]], device);
}

device_test!(cbn_window_one_is_batch_norm, window_one);

/// A history entry whose compensated variance is negative is dropped for
/// that channel only; the current iteration always counts, even where its
/// variance rounds below zero; entries past the fill do not count.
fn negative_variance(device: &Device) {
    let inner = &device.clone().inner();
    let t1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), inner);
    let t2 = |v: Vec<f32>, k: usize| {
        Tensor::<2>::from_data(TensorData::new(v.clone(), [k, v.len() / k]), device)
    };
    // Current: mean (1, 2, 3), mean_sq (2, 5, just under 9: a variance of
    // -1 ulp). History entry 0: channel 0 has mean 3, mean_sq 4 (variance
    // -5 < 0: dropped), channel 1 mean 0, mean_sq 1, channel 2 variance -1
    // (dropped). Entry 1 is inactive (fill 1) and would otherwise count.
    let (mean, var) = window_statistics(
        t1(vec![1.0, 2.0, 3.0]),
        t1(vec![2.0, 5.0, 8.999999]),
        Some(WindowHistory {
            moments: CompensatedMoments {
                mean: t2(vec![3.0, 0.0, 0.0, 100.0, 100.0, 100.0], 2),
                mean_sq: t2(vec![4.0, 1.0, -1.0, 1e5, 1e5, 1e5], 2),
            },
            filled: 1,
        }),
    );
    // Channel 0: only the current: mean 1, var 2 - 1 = 1.
    // Channel 1: (2 + 0) / 2 = 1, mean_sq (5 + 1) / 2 = 3, var 3 - 1 = 2.
    // Channel 2: only the current, its negative variance and all.
    check_close(
        "window mean",
        &mean.into_data(),
        &[3],
        &[1.0, 1.0, 3.0],
        0.0,
        1e-6,
    )
    .unwrap();
    check_close(
        "window var",
        &var.into_data(),
        &[3],
        &[1.0, 2.0, 8.999999f32 - 9.0],
        0.0,
        1e-6,
    )
    .unwrap();
}

device_test!(cbn_drops_negative_variance_per_channel, negative_variance);

/// A window step against the formulas written out entry by entry, with
/// burn autodiff's gradients of them: after two SGD steps, which move the
/// weight away from the entries' (window 4: two of three entries filled),
/// a third step's output, gradients (input, conv weight and bias, gamma,
/// beta) and running statistics, with the gradient through the compensated
/// history (the default; the reference fixtures run without it) and the
/// window's running statistics, and without either.
fn window_formulas(device: &Device) {
    let (c_in, c, rho) = (2, 3, 0.8);
    for (history_gradient, running_statistics) in [
        (true, RunningStatistics::Window),
        (false, RunningStatistics::CurrentBatch),
    ] {
        let norm = CrossIterBatchNormConfig::new(0)
            .with_window(4)
            .with_rho(rho)
            .with_history_gradient(history_gradient)
            .with_running_statistics(running_statistics);
        let mut layer = Conv2dCbnConfig::new([c_in, c], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .with_norm(norm)
            .init(device);
        // Weights from host data, the same on every backend (each backend's
        // own generator would draw others, and whether an entry is dropped
        // depends on them).
        layer.conv.weight = Param::from_tensor(uniform([c, c_in, 3, 3], 80, -0.3, 0.3, device));
        layer.conv.bias = Some(Param::from_tensor(uniform([c], 81, -0.1, 0.1, device)));
        let mut optim = SgdConfig::new().init();
        for step in 0..2 {
            let x = uniform::<4>([2, c_in, 5, 5], 60 + step, -1.0, 1.0, device);
            let g = uniform::<4>([2, c, 5, 5], 70 + step, -1.0, 1.0, device);
            let grads = layer.forward(x).mul(g).sum().backward();
            let grads = GradientsParams::from_grads(grads, &layer);
            layer = optim.step(0.02, layer, grads);
        }
        let history = layer.norm.history.as_ref().unwrap();
        assert_eq!(history.len(), 2);
        let entries = history.entries();
        let leaf = |t: Tensor<1>| t.detach().require_grad();
        let (weight, bias) = (
            layer.conv.weight.val().detach().require_grad(),
            leaf(layer.conv.bias.as_ref().unwrap().val()),
        );
        let (gamma, beta) = (
            leaf(layer.norm.gamma.as_ref().unwrap().val()),
            leaf(layer.norm.beta.as_ref().unwrap().val()),
        );
        let x = uniform::<4>([2, c_in, 5, 5], 62, -1.0, 1.0, device).require_grad();
        let g = uniform::<4>([2, c, 5, 5], 72, -1.0, 1.0, device);
        let running = |layer: &Conv2dCbn| {
            (
                layer.norm.running_mean.value_sync(),
                layer.norm.running_var.value_sync(),
            )
        };
        let (old_mean, old_var) = running(&layer);

        // The formulas: y = conv(x), mu_t, nu_t; entry i compensated,
        // mu_i(W) = mu_i + rho (<P_i, W_c> + b_c - lin_mu_i),
        // nu_i(W) = nu_i + rho (<Q_i,c, W_c> + 2 mu_i b_c - lin_nu_i),
        // kept where nu_i(W) - mu_i(W)^2 >= 0; the kept ones averaged with
        // the current iteration's.
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let y = conv2d(x.clone(), weight.clone(), Some(bias.clone()), options);
        let (w, b) = if history_gradient {
            (weight.clone(), bias.clone())
        } else {
            (weight.clone().detach(), bias.clone().detach())
        };
        let w = w.reshape([c, c_in * 9]);
        let (mut mu_sum, mut nu_sum) = (channel_mean(y.clone()), channel_mean(y.clone().square()));
        let mut count = mu_sum.zeros_like().add_scalar(1.0);
        for i in 0..history.len() {
            let row = |t: Tensor<2>| t.narrow(0, i, 1).reshape([c]);
            let p = entries
                .jac_mean
                .clone()
                .narrow(0, i, 1)
                .reshape([1, c_in * 9]);
            let q = entries
                .jac_mean_sq
                .clone()
                .narrow(0, i, 1)
                .reshape([c, c_in * 9]);
            let mu_i = row(entries.mean.clone());
            let p_w = w.clone().mul(p).sum_dim(1).reshape([c]);
            let q_w = w.clone().mul(q).sum_dim(1).reshape([c]);
            let mu_comp = p_w
                .add(b.clone())
                .sub(row(entries.lin_mean.clone()))
                .mul_scalar(rho)
                .add(mu_i.clone());
            let nu_comp = q_w
                .add(mu_i.mul(b.clone()).mul_scalar(2.0))
                .sub(row(entries.lin_mean_sq.clone()))
                .mul_scalar(rho)
                .add(row(entries.mean_sq.clone()));
            let keep = nu_comp
                .clone()
                .sub(mu_comp.clone().square())
                .detach()
                .greater_equal_elem(0.0)
                .float();
            mu_sum = mu_sum.add(mu_comp.mul(keep.clone()));
            nu_sum = nu_sum.add(nu_comp.mul(keep.clone()));
            count = count.add(keep);
        }
        // Both entries kept in every channel: the compensation is in play.
        assert_eq!(
            count.clone().into_data().try_to_vec::<f32>().unwrap(),
            vec![3.0; c],
            "{history_gradient}: entries kept per channel (current included)"
        );
        let mu = mu_sum.div(count.clone());
        let var = nu_sum.div(count).sub(mu.clone().square());
        let std = var.clone().add_scalar(layer.norm.epsilon).sqrt();
        let expected = y
            .clone()
            .sub(mu.clone().reshape([1, c, 1, 1]))
            .div(std.reshape([1, c, 1, 1]))
            .mul(gamma.clone().reshape([1, c, 1, 1]))
            .add(beta.clone().reshape([1, c, 1, 1]));
        let expected_grads = expected.clone().mul(g.clone()).sum().backward();
        // Running statistics: `(1 - m) old + m s`, with `s` the window's
        // mean and biased variance, or the current batch's mean and
        // unbiased variance.
        let (stat_mean, stat_var) = match running_statistics {
            RunningStatistics::Window => (mu.detach(), var.detach()),
            RunningStatistics::CurrentBatch => {
                let count = values_per_channel(&y.dims());
                let batch = moments(y.detach());
                (batch.mean, bessel(batch.var, count))
            }
        };
        let blend = |old: Tensor<1>, new: Tensor<1>| {
            let m = layer.norm.momentum;
            old.mul_scalar(1.0 - m).add(new.mul_scalar(m))
        };
        let (expected_mean, expected_var) = (blend(old_mean, stat_mean), blend(old_var, stat_var));

        let out = layer.forward(x.clone());
        let grads = out.clone().mul(g).sum().backward();
        let case = format!("history_gradient {history_gradient}, {running_statistics:?}");
        let compare = |what: &str, actual: TensorData, expected: TensorData| {
            let values: Vec<f32> = expected.try_to_vec::<f32>().unwrap();
            check_matmul(
                device,
                &format!("{case}: {what}"),
                &actual,
                expected.shape(),
                &values,
            )
            .unwrap();
        };
        compare("output", out.into_data(), expected.into_data());
        compare(
            "grad input",
            x.grad(&grads).unwrap().into_data(),
            x.grad(&expected_grads).unwrap().into_data(),
        );
        compare(
            "grad conv weight",
            layer.conv.weight.grad(&grads).unwrap().into_data(),
            weight.grad(&expected_grads).unwrap().into_data(),
        );
        for (what, param, leaf) in [
            ("grad conv bias", &layer.conv.bias, &bias),
            ("grad gamma", &layer.norm.gamma, &gamma),
            ("grad beta", &layer.norm.beta, &beta),
        ] {
            compare(
                what,
                param.as_ref().unwrap().grad(&grads).unwrap().into_data(),
                leaf.grad(&expected_grads).unwrap().into_data(),
            );
        }
        let (running_mean, running_var) = running(&layer);
        compare(
            "running mean",
            running_mean.into_data(),
            expected_mean.into_data(),
        );
        compare(
            "running var",
            running_var.into_data(),
            expected_var.into_data(),
        );
    }
}

device_test!(cbn_window_step_is_the_formulas, window_formulas);

/// A batch of one — one value per channel — never produces NaN, with
/// either eps placement, through burn-in and a full window, and in eval.
fn batch_of_one(device: &Device) {
    for placement in [EpsPlacement::InsideSqrt, EpsPlacement::OnStd] {
        let norm = CrossIterBatchNormConfig::new(0)
            .with_window(3)
            .with_burn_in(1)
            .with_eps_placement(placement);
        let conv = Conv2dCbnConfig::new([2, 3], [1, 1])
            .with_norm(norm.clone())
            .init(device);
        assert_single_value_is_finite(&format!("conv {placement:?}"), conv, [1, 2, 1, 1], device);
        let linear = LinearCbnConfig::new(4, 3).with_norm(norm).init(device);
        assert_single_value_is_finite(&format!("linear {placement:?}"), linear, [1, 4], device);
    }
}

device_test!(cbn_batch_of_one_is_finite, batch_of_one);

/// Gradient accumulation (burn's `GradientsAccumulator`, one optimizer
/// step per four micro-batches of one sample each): the weights do not
/// move within an optimizer step, so its micro-batches' history entries
/// need no compensation, and with `window = 4` the last micro-batch of
/// each step is normalized with the statistics of the whole effective
/// batch — its output is burn's `Conv2d` + `BatchNorm` (training) of the
/// four micro-batches concatenated, at the last sample. Checked for two
/// optimizer steps (the second after the weights, gamma and beta moved);
/// every accumulated gradient stays finite.
fn gradient_accumulation(device: &Device) {
    let config = || {
        Conv2dCbnConfig::new([2, 3], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .with_window(4)
    };
    let mut cbn = config().init(device);
    cbn.conv.weight = Param::from_tensor(uniform([3, 2, 3, 3], 61, -0.3, 0.3, device));
    cbn.conv.bias = Some(Param::from_tensor(uniform([3], 62, -0.2, 0.2, device)));
    let mut optim = SgdConfig::new().init();
    let mut accumulator = GradientsAccumulator::<Conv2dCbn>::new();
    for step in 0..2u64 {
        let micro: Vec<Tensor<4>> = (0..4)
            .map(|i| uniform([1, 2, 5, 5], 10 * step + i, -1.0, 2.0, device))
            .collect();
        let mut last = None;
        for (i, x) in micro.iter().enumerate() {
            let y = cbn.forward(x.clone());
            let g = uniform::<4>([1, 3, 5, 5], 100 + 10 * step + i as u64, -1.0, 1.0, device);
            let grads = y.clone().mul(g).sum().backward();
            let grad_w = cbn.conv.weight.grad(&grads).unwrap().into_data();
            assert_finite(&format!("step {step} micro-batch {i} grad W"), &grad_w);
            accumulator.accumulate(&cbn, GradientsParams::from_grads(grads, &cbn));
            last = Some(y);
        }
        assert_eq!(cbn.norm.history_len(), 3, "step {step}: the window is full");

        let mut conv = Conv2dConfig::new([2, 3], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(device);
        conv.weight = Param::from_tensor(cbn.conv.weight.val().detach());
        conv.bias = cbn
            .conv
            .bias
            .as_ref()
            .map(|b| Param::from_tensor(b.val().detach()));
        let mut bn = BatchNormConfig::new(3).init(device);
        let norm = &cbn.norm;
        bn.gamma = Param::from_tensor(norm.gamma.as_ref().unwrap().val().detach());
        bn.beta = Param::from_tensor(norm.beta.as_ref().unwrap().val().detach());
        let pooled = bn.forward(conv.forward(Tensor::cat(micro, 0)));
        check_matmul(
            device,
            &format!("step {step}: last micro-batch against the pooled batch"),
            &last.unwrap().into_data(),
            &[1, 3, 5, 5],
            &to_vec(pooled.narrow(0, 3, 1)),
        )
        .unwrap();
        cbn = optim.step(0.05, cbn, accumulator.grads());
    }
}

device_test!(
    cbn_gradient_accumulation_pools_the_effective_batch,
    gradient_accumulation
);

/// `LinearCbn` over `[N, L, C]` normalizes each feature over all `N * L`
/// rows: identical to the same rows given as `[N * L, C]`.
fn linear_sequence(device: &Device) {
    let config = LinearCbnConfig::new(4, 3).with_window(3);
    let seq = materialize(host_seeded(config.init(device), 1));
    let flat = config.init(device).load_record(seq.clone().into_record());
    for step in 0..3 {
        let x = uniform::<3>([2, 5, 4], step, -1.0, 1.0, device);
        let a = seq.forward(x.clone());
        let b = flat.forward(x.reshape([10, 4]));
        check_close(
            &format!("step {step}"),
            &a.into_data(),
            &[2, 5, 3],
            &to_vec(b),
            1e-6,
            1e-6,
        )
        .unwrap();
    }
}

device_test!(linear_cbn_sequences, linear_sequence);

/// History memory for a 64 -> 64 3x3 conv with window 8, against the
/// reference's `(k - 1) * (3|W| + 2C)` floats.
#[test]
fn history_memory_is_under_0_4x_the_reference() {
    let layer = Conv2dCbnConfig::new([64, 64], [3, 3])
        .with_window(8)
        .init(&common::baseline());
    let ours = layer.norm.history.as_ref().unwrap().num_floats();
    let w = 64 * 64 * 9;
    let reference = 7 * (3 * w + 2 * 64);
    let ratio = ours as f64 / reference as f64;
    println!("history floats: ours {ours}, reference {reference}, ratio {ratio:.3}");
    assert_eq!(ours, 7 * (w + 64 * 9 + 4 * 64));
    assert!(ratio <= 0.4, "ratio {ratio}");
}
