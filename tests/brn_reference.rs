//! Replays every Batch Renormalization reference fixture
//! (`tests/fixtures/reference/brn/*.json`, or `$BNORM_REFERENCE_FIXTURES/brn`)
//! step by step and compares output, gradients and state after each step.

use crate::common;

use std::path::Path;

use bnorm::AveragedState;
use bnorm::{BatchRenorm, BatchRenormConfig, EpsPlacement, HostCounter, Schedule};
use burn::module::Module;
use burn::module::Param;
use burn::tensor::Device;
use burn::tensor::Tensor;
use common::*;
use rstest::rstest;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    config: Config,
    initial: Initial,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Config {
    num_features: usize,
    eps: f64,
    eps_on_std: bool,
    momentum: f64,
    affine: bool,
}

#[derive(Deserialize)]
struct Initial {
    weight: JsonTensor,
    bias: JsonTensor,
    running_mean: JsonTensor,
    running_std: JsonTensor,
    num_batches_tracked: u64,
}

#[derive(Deserialize)]
struct Step {
    mode: String,
    num_batches_tracked_before: u64,
    rmax: Option<f64>,
    dmax: Option<f64>,
    input: JsonTensor,
    grad_output: JsonTensor,
    mask: Option<JsonTensor>,
    output: JsonTensor,
    grad_input: JsonTensor,
    grad_weight: Option<JsonTensor>,
    grad_bias: Option<JsonTensor>,
    running_mean: JsonTensor,
    running_std: JsonTensor,
    num_batches_tracked: u64,
}

fn counter(n: u64, device: &Device) -> HostCounter {
    HostCounter::at(n as f64, device)
}

fn replay(device: &Device, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let fixture: Fixture = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let cfg = &fixture.config;
    let mut layer: BatchRenorm = BatchRenormConfig::new(cfg.num_features)
        .with_epsilon(cfg.eps)
        .with_momentum(cfg.momentum)
        .with_affine(cfg.affine)
        .with_eps_placement(if cfg.eps_on_std {
            EpsPlacement::OnStd
        } else {
            EpsPlacement::InsideSqrt
        })
        .init(device);
    if cfg.affine {
        layer.gamma = Some(Param::from_tensor(fixture.initial.weight.tensor(device)));
        layer.beta = Some(Param::from_tensor(fixture.initial.bias.tensor(device)));
    }
    layer.running_mean = AveragedState::new(fixture.initial.running_mean.tensor(device));
    layer.running_std = AveragedState::new(fixture.initial.running_std.tensor(device));
    layer.steps = counter(fixture.initial.num_batches_tracked, device);

    for (i, step) in fixture.steps.iter().enumerate() {
        let at = |tensor: &str| format!("step {i} ({}), {tensor}", step.mode);
        if layer.steps() as u64 != step.num_batches_tracked_before {
            layer.steps = counter(step.num_batches_tracked_before, device);
        }
        if let (Some(rmax), Some(dmax)) = (step.rmax, step.dmax) {
            let n = step.num_batches_tracked_before as f64;
            for (name, schedule, want) in [("rmax", &layer.rmax, rmax), ("dmax", &layer.dmax, dmax)]
            {
                let got = schedule.value_at(n);
                if (got - want).abs() > 1e-5 * want.abs().max(1.0) {
                    return Err(format!(
                        "{}: schedule gives {got}, reference {want}",
                        at(name)
                    ));
                }
            }
        }
        match step.input.shape.len() {
            2 => replay_step::<2>(device, &layer, step, &at)?,
            3 => replay_step::<3>(device, &layer, step, &at)?,
            4 => replay_step::<4>(device, &layer, step, &at)?,
            5 => replay_step::<5>(device, &layer, step, &at)?,
            r => return Err(format!("unsupported input rank {r}")),
        }
        check_json(
            &at("running_mean"),
            &layer.running_mean.value_sync().into_data(),
            &step.running_mean,
            RTOL,
            ATOL,
        )?;
        check_json(
            &at("running_std"),
            &layer.running_std.value_sync().into_data(),
            &step.running_std,
            RTOL,
            ATOL,
        )?;
        if layer.steps() as u64 != step.num_batches_tracked {
            return Err(format!(
                "{}: {} , expected {}",
                at("num_batches_tracked"),
                layer.steps(),
                step.num_batches_tracked
            ));
        }
    }
    Ok(())
}

fn replay_step<const D: usize>(
    device: &Device,
    layer: &BatchRenorm,
    step: &Step,
    at: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let input = step.input.tensor::<D>(device).require_grad();
    let grad_output = step.grad_output.tensor::<D>(device);
    let train = step.mode == "train";
    let output = match (&step.mask, train) {
        (Some(mask), true) => {
            let input3: Tensor<3> = input
                .clone()
                .reshape(step.input.shape.as_slice().try_into_3());
            layer
                .forward_masked(input3, mask.mask(device))
                .reshape(input.dims())
        }
        (None, true) => layer.forward(input.clone()),
        (_, false) => {
            // Inference proper (no autodiff) must agree with the frozen
            // forward that the gradients below come from.
            let inference = layer
                .valid()
                .forward(step.input.tensor::<D>(&device.clone().inner()));
            check_json(
                &at("output (valid())"),
                &inference.into_data(),
                &step.output,
                RTOL,
                ATOL,
            )?;
            layer.forward_frozen(input.clone())
        }
    };
    check_json(
        &at("output"),
        &output.clone().into_data(),
        &step.output,
        RTOL,
        ATOL,
    )?;
    let grads = output.mul(grad_output).sum().backward();
    let grad_input = input.grad(&grads).ok_or("no gradient for the input")?;
    check_json(
        &at("grad_input"),
        &grad_input.into_data(),
        &step.grad_input,
        RTOL,
        ATOL,
    )?;
    if let (Some(gamma), Some(expected)) = (&layer.gamma, &step.grad_weight) {
        let g = gamma.grad(&grads).ok_or("no gradient for gamma")?;
        check_json(&at("grad_weight"), &g.into_data(), expected, RTOL, ATOL)?;
    }
    if let (Some(beta), Some(expected)) = (&layer.beta, &step.grad_bias) {
        let g = beta.grad(&grads).ok_or("no gradient for beta")?;
        check_json(&at("grad_bias"), &g.into_data(), expected, RTOL, ATOL)?;
    }
    Ok(())
}

trait Dims3 {
    fn try_into_3(&self) -> [usize; 3];
}
impl Dims3 for &[usize] {
    fn try_into_3(&self) -> [usize; 3] {
        [self[0], self[1], self[2]]
    }
}

fn replay_all(device: &Device, name: &str) {
    run_fixtures(&reference_dir().join("brn"), name, |path| {
        replay(device, path)
    });
}

#[rstest]
#[case::ndarray(TestDevice::NdArray)]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_reference_fixtures(#[case] dev: TestDevice) {
    on_device!(dev, replay_all, dev.name());
}

/// The default schedules are the paper's, and compression rescales steps.
#[test]
fn paper_schedules() {
    let cfg = BatchRenormConfig::new(4);
    assert_eq!(cfg.rmax, Schedule::paper_rmax());
    assert_eq!(cfg.rmax.value_at(0.0), 1.0);
    assert_eq!(cfg.rmax.value_at(5_000.0), 1.0);
    assert!((cfg.rmax.value_at(22_500.0) - 2.0).abs() < 1e-12);
    assert_eq!(cfg.rmax.value_at(1e9), 3.0);
    assert!((cfg.dmax.value_at(15_000.0) - 2.5).abs() < 1e-12);
    let short = cfg.with_steps_compressed_to(400);
    assert!((short.rmax.value_at(50.0) - 1.0).abs() < 1e-12);
    assert!((short.rmax.value_at(400.0) - 3.0).abs() < 1e-12);
    assert!((short.dmax.value_at(250.0) - 5.0).abs() < 1e-12);
}
