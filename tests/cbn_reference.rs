//! Replays every Cross-Iteration BN reference fixture
//! (`tests/fixtures/reference/cbn/*.json`, or `$BNORM_REFERENCE_FIXTURES/cbn`)
//! step by step through `Conv2dCbn` in reference-compatible settings.
//!
//! Every tensor compared here but `grad_beta` (the sum of the output
//! gradient) comes out of, or flows back through, the layer's
//! convolution, so it is compared with `check_matmul`: the
//! fixtures' 1e-4 / 1e-5 on ndarray and wgpu, which convolve in float32,
//! and TF32's 2e-3 on CUDA, whose autotuned convolutions run on tensor
//! cores in TF32 (an H100 run at 1e-4: every fixture off from step 0, by
//! up to 2.4e-3 of an output element, the convolution's own rounding).
//! The CBN math itself is held to 1e-4 on the GPU code path by the wgpu
//! case (the same burn-cubecl kernels, fusion and autotune, in float32).

use crate::common;

use std::path::Path;

use bnorm::AveragedState;
use bnorm::{BurnInMode, Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig, EpsPlacement};
use burn::module::Module;
use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::tensor::Device;
use burn::tensor::Tensor;
use common::*;
use rstest::rstest;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    config: Config,
    conv: Conv,
    initial: Initial,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Config {
    num_features: usize,
    eps: f64,
    momentum: f64,
    window: usize,
    rho: f64,
    burnin: usize,
    two_stage: bool,
    out_p: bool,
}

#[derive(Deserialize)]
struct Conv {
    in_channels: usize,
    out_channels: usize,
    kernel_size: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    bias: bool,
}

#[derive(Deserialize)]
struct Initial {
    gamma: JsonTensor,
    beta: JsonTensor,
    running_mean: JsonTensor,
    running_var: JsonTensor,
}

#[derive(Deserialize)]
struct Step {
    mode: String,
    input: JsonTensor,
    conv_weight: JsonTensor,
    grad_output: JsonTensor,
    output: JsonTensor,
    grad_input: JsonTensor,
    grad_conv_weight: JsonTensor,
    grad_gamma: JsonTensor,
    grad_beta: JsonTensor,
    running_mean: JsonTensor,
    running_var: JsonTensor,
    window_len_after: usize,
    iter_count: usize,
    gamma_after_update: Option<JsonTensor>,
    beta_after_update: Option<JsonTensor>,
}

/// The reference's settings: eps on the std unless `out_p`, unbiased plain
/// variance, running statistics from the current batch, history terms as
/// constants, no bias.
fn reference_layer(fixture: &Fixture, device: &Device) -> Conv2dCbn {
    let cfg = &fixture.config;
    let norm = CrossIterBatchNormConfig::new(cfg.num_features)
        .with_window(cfg.window)
        .with_rho(cfg.rho)
        .with_burn_in(cfg.burnin)
        .with_burn_in_mode(if cfg.two_stage {
            BurnInMode::TwoStage
        } else {
            BurnInMode::Ramp
        })
        .with_momentum(cfg.momentum)
        .with_epsilon(cfg.eps)
        .reference()
        .with_eps_placement(if cfg.out_p {
            EpsPlacement::InsideSqrt
        } else {
            EpsPlacement::OnStd
        });
    let conv = &fixture.conv;
    let [ph, pw] = conv.padding;
    let mut layer = Conv2dCbnConfig::new([conv.in_channels, conv.out_channels], conv.kernel_size)
        .with_stride(conv.stride)
        .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
        .with_bias(conv.bias)
        .with_norm(norm)
        .init(device);
    layer.norm.gamma = Some(Param::from_tensor(fixture.initial.gamma.tensor(device)));
    layer.norm.beta = Some(Param::from_tensor(fixture.initial.beta.tensor(device)));
    layer.norm.running_mean = AveragedState::new(fixture.initial.running_mean.tensor(device));
    layer.norm.running_var = AveragedState::new(fixture.initial.running_var.tensor(device));
    layer
}

fn replay(device: &Device, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let fixture: Fixture = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut layer = reference_layer(&fixture, device);
    for (i, step) in fixture.steps.iter().enumerate() {
        let at = |tensor: &str| format!("step {i} ({}), {tensor}", step.mode);
        layer.conv.weight = Param::from_tensor(step.conv_weight.tensor(device));
        let input: Tensor<4> = step.input.tensor(device).require_grad();
        let output = if step.mode == "train" {
            layer.forward(input.clone())
        } else {
            let inference = layer
                .valid()
                .forward(step.input.tensor(&device.clone().inner()));
            check_json_matmul(
                device,
                &at("output (valid())"),
                &inference.into_data(),
                &step.output,
            )?;
            // Gradients in inference mode: the frozen-statistics path.
            layer.norm.forward_frozen(layer.conv.forward(input.clone()))
        };
        check_json_matmul(
            device,
            &at("output"),
            &output.clone().into_data(),
            &step.output,
        )?;
        let grads = output.mul(step.grad_output.tensor(device)).sum().backward();
        let grad = |t: Option<Tensor<4>>| t.ok_or("missing gradient").map(|t| t.into_data());
        check_json_matmul(
            device,
            &at("grad_input"),
            &grad(input.grad(&grads))?,
            &step.grad_input,
        )?;
        check_json_matmul(
            device,
            &at("grad_conv_weight"),
            &grad(layer.conv.weight.grad(&grads))?,
            &step.grad_conv_weight,
        )?;
        let gamma = layer
            .norm
            .gamma
            .as_ref()
            .unwrap()
            .grad(&grads)
            .ok_or("no gamma gradient")?;
        check_json_matmul(
            device,
            &at("grad_gamma"),
            &gamma.into_data(),
            &step.grad_gamma,
        )?;
        let beta = layer
            .norm
            .beta
            .as_ref()
            .unwrap()
            .grad(&grads)
            .ok_or("no beta gradient")?;
        // The sum of the output gradient: no convolution, float32 everywhere.
        check_json(
            &at("grad_beta"),
            &beta.into_data(),
            &step.grad_beta,
            RTOL,
            ATOL,
        )?;
        check_json_matmul(
            device,
            &at("running_mean"),
            &layer.norm.running_mean.value_sync().into_data(),
            &step.running_mean,
        )?;
        check_json_matmul(
            device,
            &at("running_var"),
            &layer.norm.running_var.value_sync().into_data(),
            &step.running_var,
        )?;
        let fill = layer.norm.history_len();
        if fill != step.window_len_after {
            return Err(format!(
                "{}: {fill}, expected {}",
                at("window_len_after"),
                step.window_len_after
            ));
        }
        // The reference counts iterations only when burn-in is on; this
        // layer always counts training steps.
        if fixture.config.burnin > 0 && layer.norm.steps() != step.iter_count {
            return Err(format!(
                "{}: {}, expected {}",
                at("iter_count"),
                layer.norm.steps(),
                step.iter_count
            ));
        }
        if let (Some(g), Some(b)) = (&step.gamma_after_update, &step.beta_after_update) {
            layer.norm.gamma = Some(Param::from_tensor(g.tensor(device)));
            layer.norm.beta = Some(Param::from_tensor(b.tensor(device)));
        }
    }
    Ok(())
}

fn replay_all(device: &Device, name: &str) {
    run_fixtures(&reference_dir().join("cbn"), name, |path| {
        replay(device, path)
    });
}

#[rstest]
#[case::ndarray(TestDevice::NdArray)]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_reference_fixtures(#[case] dev: TestDevice) {
    on_device!(dev, replay_all, dev.name());
}
