//! Exactness where the layers promise it. burn-ndarray's SIMD `recip`
//! (burn's default features) runs the CPU's approximate-reciprocal
//! instructions, and burn's gradient of `a / b` with respect to `a` goes
//! through it; the layers use `bnorm::core::reciprocal` instead. Built with
//! `--features simd` (burn-ndarray's SIMD kernels, as CI runs them), these
//! tests fail if an approximate reciprocal comes back: `1 / x` must be correctly
//! rounded with a correctly rounded gradient, and a repeated training step
//! must give bit-identical gradients (the approximate path made them vary
//! from one run to the next).

use crate::common;

use bnorm::core::reciprocal;
use bnorm::{Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::Device;
use burn::tensor::TensorData;
use common::random::{host_seeded, uniform};
use common::*;
use rstest::rstest;

/// How far a device's `1 / x` may be from the correctly rounded value, in
/// units in the last place: IEEE division on the CPU. On wgpu, burn's
/// kernels are WGSL, whose spec allows `x / y` 2.5 ulp from the exact
/// quotient: 3 ulp from the correctly rounded one. On CUDA, cubecl 0.11
/// lowers kernels through LLVM's NVPTX backend, whose `fdiv` without
/// fast-math flags is `div.rn.f32` (IEEE): 0 ulp is expected, 2 (CUDA's
/// `__fdividef`) is a margin until a GPU run of this build has shown it.
fn ulp_budget(device: TestDevice) -> u32 {
    match device {
        TestDevice::NdArray | TestDevice::Flex => 0,
        #[cfg(feature = "wgpu")]
        TestDevice::Wgpu => 3,
        #[cfg(feature = "cuda")]
        TestDevice::Cuda => 2,
    }
}

fn assert_within_ulps(what: &str, got: &[f32], expected: &[f32], ulps: u32) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths differ");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let distance = (g.to_bits() as i64 - e.to_bits() as i64).unsigned_abs();
        assert!(
            distance <= ulps as u64,
            "{what}: element {i} is {g}, the correctly rounded value is {e} ({distance} ulp apart, \
             {ulps} allowed)"
        );
    }
}

/// 64 values (the SIMD path starts at 32): `1 / x` and its gradient
/// `-1 / x^2` against the host's IEEE division.
fn reciprocal_is_correctly_rounded(device: &Device, ulps: u32) {
    let x = uniform::<1>([64], 7, 0.3, 7.0, device).require_grad();
    let host: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
    let y = reciprocal(x.clone());
    let expected: Vec<f32> = host.iter().map(|v| 1.0 / v).collect();
    let got: Vec<f32> = y.clone().into_data().try_to_vec().unwrap();
    assert_within_ulps("1 / x", &got, &expected, ulps);

    let grads = y.sum().backward();
    let expected: Vec<f32> = host.iter().map(|v| -1.0 / (v * v)).collect();
    let got: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
    assert_within_ulps("d(1 / x)/dx", &got, &expected, ulps);
}

#[rstest]
#[case::ndarray(TestDevice::NdArray)]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn reciprocal_is_exact(#[case] dev: TestDevice) {
    on_device!(dev, reciprocal_is_correctly_rounded, ulp_budget(dev));
}

fn cbn_block(channels: [usize; 2]) -> Conv2dCbnConfig {
    Conv2dCbnConfig::new(channels, [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .with_norm(CrossIterBatchNormConfig::new(0).with_window(4))
}

/// Two conv + CBN blocks (32 channels, where the SIMD path starts), the same
/// state loaded four times, the same training step on each: the first
/// block's weight gradient is the same bits every time.
fn repeated_step(device: &Device) {
    // Loading its own record draws the lazily initialized weights once.
    let materialized = |channels: [usize; 2]| {
        let block = host_seeded(cbn_block(channels).init(device), 5);
        let record = block.clone().into_record();
        block.load_record(record)
    };
    let (template_1, template_2) = (materialized([2, 32]), materialized([32, 32]));
    let x = uniform::<4>([2, 2, 6, 6], 1, -1.0, 1.0, device);
    let upstream = uniform::<4>([2, 32, 6, 6], 2, -1.0, 1.0, device);

    let mut gradients: Vec<TensorData> = Vec::new();
    for _ in 0..4 {
        // Fresh modules: a clone would share the running buffers.
        let first: Conv2dCbn = cbn_block([2, 32])
            .init(device)
            .load_record(template_1.clone().into_record());
        let second: Conv2dCbn = cbn_block([32, 32])
            .init(device)
            .load_record(template_2.clone().into_record());
        let y = second.forward(relu(first.forward(x.clone())));
        let grads = y.mul(upstream.clone()).sum().backward();
        gradients.push(first.conv.weight.grad(&grads).unwrap().into_data());
    }
    for (i, g) in gradients.iter().enumerate().skip(1) {
        assert_bits_eq(
            &format!("first block's weight gradient, repetition {i} vs 0"),
            &gradients[0],
            g,
        );
    }
}

device_test!(repeated_step_is_bit_identical, repeated_step);
