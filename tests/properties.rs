//! Property tests over generated configurations (a fixed seed, so every
//! run checks the same cases): random shapes, ranks, windows, strides,
//! dilations, paddings, groups and options through every layer (BRN at
//! ranks 2 to 5, CBN's linear, 1D, 2D and 3D blocks). Each case trains
//! three steps from finite input and finds finite outputs, gradients and
//! state; then an input with the wrong channel count panics with a
//! message naming what was expected and what came, and leaves the state
//! as it was.

use crate::common;

use bnorm::{
    BatchRenorm, BatchRenormConfig, BurnInMode, Conv1dCbnConfig, Conv2dCbnConfig, Conv3dCbnConfig,
    CrossIterBatchNormConfig, EpsPlacement, LinearCbnConfig,
};
use burn::module::Module;
use burn::nn::{PaddingConfig1d, PaddingConfig2d, PaddingConfig3d};
use burn::tensor::{Device, Tensor};
use common::*;

/// Cases per layer on a CPU device; a GPU device compiles kernels for
/// every new shape (seconds each on lavapipe), so it runs the first
/// [`GPU_CASES`].
const CASES: u64 = 24;
const GPU_CASES: u64 = 4;

/// How many cases to run on `device`.
fn cases(device: &Device) -> u64 {
    if is_cube(device) {
        GPU_CASES
    } else {
        CASES
    }
}

/// SplitMix64: a fixed sequence of draws per case.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn flip(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.range(0, options.len() - 1)]
    }
}

/// A module's record as bytes: every tensor it saves.
fn state<M: Module>(module: &M) -> Vec<u8> {
    module.clone().into_record().into_bytes().unwrap().to_vec()
}

/// A conv block's groups and input and output channels (1 or 2 groups of
/// 1 or 2 channels each side) drawn from `draws`.
fn conv_channels(draws: &mut Draws) -> (usize, usize, usize) {
    let groups = draws.range(1, 2);
    let c_in = groups * draws.range(1, 2);
    let c_out = groups * draws.range(1, 2);
    (groups, c_in, c_out)
}

/// [`trains_finite_and_rejects`] for a conv block built from `config` (for
/// the case's name) on inputs of `shape`, the rejected one with one input
/// channel more.
fn conv_block_case<const D: usize>(
    case: u64,
    config: &impl std::fmt::Debug,
    shape: [usize; D],
    forward: impl Fn(Tensor<D>) -> Tensor<D>,
    state: impl Fn() -> Vec<u8>,
    device: &Device,
) {
    let c_in = shape[1];
    let mut bad_shape = shape;
    bad_shape[1] = c_in + 1;
    trains_finite_and_rejects(
        &format!("case {case} ({config:?}), input {shape:?}"),
        |s| uniform(shape, 10 * case + s, device),
        uniform(bad_shape, 0, device),
        &format!("{c_in}"),
        forward,
        state,
    );
}

/// A CBN configuration drawn from `draws`.
fn cbn_norm(draws: &mut Draws) -> CrossIterBatchNormConfig {
    CrossIterBatchNormConfig::new(0)
        .with_window(draws.range(1, 4))
        .with_rho(draws.pick(&[0.0, 0.5, 1.0]))
        .with_burn_in(draws.range(0, 2))
        .with_burn_in_mode(draws.pick(&[BurnInMode::TwoStage, BurnInMode::Ramp]))
        .with_eps_placement(draws.pick(&[EpsPlacement::InsideSqrt, EpsPlacement::OnStd]))
        .with_affine(draws.flip())
        .with_history_gradient(draws.flip())
}

/// Three training steps of `forward` on finite inputs from `input`: finite
/// output and input gradient; then `bad` (the wrong channel count) panics
/// naming `expected` and leaves `state()` as it was; then the state is
/// finite (checked through a last good step's output).
fn trains_finite_and_rejects<const D: usize>(
    case: &str,
    input: impl Fn(u64) -> Tensor<D>,
    bad: Tensor<D>,
    expected: &str,
    forward: impl Fn(Tensor<D>) -> Tensor<D>,
    state: impl Fn() -> Vec<u8>,
) {
    for step in 0..3 {
        let x = input(step).require_grad();
        let y = forward(x.clone());
        assert_finite(
            &format!("{case} step {step}: output"),
            &y.clone().into_data(),
        );
        let grads = y.powf_scalar(2.0).sum().backward();
        assert_finite(
            &format!("{case} step {step}: input gradient"),
            &x.grad(&grads).unwrap().into_data(),
        );
    }
    let before = state();
    let bad_dims = bad.dims();
    let message = panic_message(|| {
        let _ = forward(bad);
    });
    assert!(
        message.contains(expected) && message.contains(&format!("{bad_dims:?}")),
        "{case}: the panic names {expected} and the shape received {bad_dims:?}: {message}"
    );
    assert!(
        state() == before,
        "{case}: state unchanged after a rejected input"
    );
    let y = forward(input(9));
    assert_finite(
        &format!("{case}: output after the rejected input"),
        &y.into_data(),
    );
}

fn uniform<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    common::random::uniform(shape, seed, -1.5, 2.5, device)
}

fn brn_properties(device: &Device) {
    for case in 0..cases(device) {
        let mut draws = Draws(1000 + case);
        let c = draws.range(1, 4);
        let rank = draws.range(2, 5);
        let mut config = BatchRenormConfig::new(c)
            .with_affine(draws.flip())
            .with_eps_placement(draws.pick(&[EpsPlacement::InsideSqrt, EpsPlacement::OnStd]))
            .with_momentum(draws.pick(&[0.01, 0.1, 0.5]));
        if draws.flip() {
            config = config.with_steps_compressed_to(draws.range(1, 4));
        }
        let layer: BatchRenorm = config.init(device);
        let batch = draws.range(1, 3);
        let sizes = [draws.range(1, 3), draws.range(1, 3), draws.range(1, 3)];
        let name = format!("BatchRenorm case {case} ({config:?}), rank {rank}");
        let expected = format!("built for {c} channels");
        macro_rules! run {
            ($d:literal) => {{
                let mut shape = [0; $d];
                shape[0] = batch;
                shape[1] = c;
                for (i, s) in shape.iter_mut().skip(2).enumerate() {
                    *s = sizes[i];
                }
                let mut bad_shape = shape;
                bad_shape[1] = c + 1;
                trains_finite_and_rejects(
                    &name,
                    |s| uniform(shape, 10 * case + s, device),
                    uniform(bad_shape, 0, device),
                    &expected,
                    |x| layer.forward(x),
                    || state(&layer),
                );
            }};
        }
        match rank {
            2 => run!(2),
            3 => run!(3),
            4 => run!(4),
            _ => run!(5),
        }
    }
}

fn conv2d_cbn_properties(device: &Device) {
    let mut small_inputs = 0;
    for case in 0..cases(device) {
        let mut draws = Draws(2000 + case);
        let (groups, c_in, c_out) = conv_channels(&mut draws);
        let kernel = [draws.range(1, 3), draws.range(1, 3)];
        let stride = [draws.range(1, 2), draws.range(1, 2)];
        let dilation = [draws.range(1, 2), draws.range(1, 2)];
        let padding = [draws.range(0, 1), draws.range(0, 1)];
        let config = Conv2dCbnConfig::new([c_in, c_out], kernel)
            .with_groups(groups)
            .with_stride(stride)
            .with_dilation(dilation)
            .with_padding(PaddingConfig2d::Explicit(
                padding[0], padding[1], padding[0], padding[1],
            ))
            .with_bias(draws.flip())
            .with_norm(cbn_norm(&mut draws));
        let block = config.init(device);
        // At least one output position: the dilated kernel fits.
        let size = |axis: usize, draws: &mut Draws| {
            let reach = dilation[axis] * (kernel[axis] - 1) + 1;
            reach.saturating_sub(2 * padding[axis]).max(1) + draws.range(0, 2)
        };
        let shape = [
            draws.range(1, 2),
            c_in,
            size(0, &mut draws),
            size(1, &mut draws),
        ];
        conv_block_case(
            case,
            &config,
            shape,
            |x| block.forward(x),
            || state(&block),
            device,
        );
        // An input too small for the dilated kernel, where one exists.
        let reach = dilation[0] * (kernel[0] - 1) + 1;
        if reach > 2 * padding[0] + 1 {
            let small = [1, c_in, reach - 2 * padding[0] - 1, shape[3]];
            let before = state(&block);
            let message = panic_message(|| {
                let _ = block.forward(uniform(small, 0, device));
            });
            assert!(
                message.contains("hold the dilated kernel")
                    && message.contains(&format!("{small:?}")),
                "case {case}: {message}"
            );
            assert!(state(&block) == before, "case {case}: state unchanged");
            small_inputs += 1;
        }
    }
    if cases(device) == CASES {
        assert!(
            small_inputs > 0,
            "some case met an input too small for its kernel"
        );
    }
}

fn conv1d_cbn_properties(device: &Device) {
    for case in 0..cases(device) {
        let mut draws = Draws(3000 + case);
        let (groups, c_in, c_out) = conv_channels(&mut draws);
        let kernel = draws.range(1, 3);
        let stride = draws.range(1, 2);
        let dilation = draws.range(1, 2);
        let padding = draws.range(0, 1);
        let config = Conv1dCbnConfig::new(c_in, c_out, kernel)
            .with_groups(groups)
            .with_stride(stride)
            .with_dilation(dilation)
            .with_padding(PaddingConfig1d::Explicit(padding, padding))
            .with_bias(draws.flip())
            .with_norm(cbn_norm(&mut draws));
        let block = config.init(device);
        let reach = dilation * (kernel - 1) + 1;
        let length = reach.saturating_sub(2 * padding).max(1) + draws.range(0, 3);
        let shape = [draws.range(1, 2), c_in, length];
        conv_block_case(
            case,
            &config,
            shape,
            |x| block.forward(x),
            || state(&block),
            device,
        );
    }
}

fn conv3d_cbn_properties(device: &Device) {
    for case in 0..cases(device) / 2 {
        let mut draws = Draws(5000 + case);
        let (groups, c_in, c_out) = conv_channels(&mut draws);
        let kernel = [draws.range(1, 2), draws.range(1, 2), draws.range(1, 2)];
        let stride = [draws.range(1, 2), 1, draws.range(1, 2)];
        let padding = [draws.range(0, 1), draws.range(0, 1), 0];
        let config = Conv3dCbnConfig::new([c_in, c_out], kernel)
            .with_groups(groups)
            .with_stride(stride)
            .with_padding(PaddingConfig3d::Explicit(
                padding[0], padding[1], padding[2],
            ))
            .with_bias(draws.flip())
            .with_norm(cbn_norm(&mut draws));
        let block = config.init(device);
        let size = |a: usize, draws: &mut Draws| kernel[a] + draws.range(0, 1);
        let shape = [
            draws.range(1, 2),
            c_in,
            size(0, &mut draws),
            size(1, &mut draws),
            size(2, &mut draws),
        ];
        conv_block_case(
            case,
            &config,
            shape,
            |x| block.forward(x),
            || state(&block),
            device,
        );
    }
}

fn linear_cbn_properties(device: &Device) {
    for case in 0..cases(device) {
        let mut draws = Draws(4000 + case);
        let (d_in, d_out) = (draws.range(1, 4), draws.range(1, 4));
        let config = LinearCbnConfig::new(d_in, d_out)
            .with_bias(draws.flip())
            .with_norm(cbn_norm(&mut draws));
        let block = config.init(device);
        let shape = [draws.range(1, 3), d_in];
        trains_finite_and_rejects(
            &format!("LinearCbn case {case} ({config:?}), input {shape:?}"),
            |s| uniform(shape, 10 * case + s, device),
            uniform([shape[0], d_in + 1], 0, device),
            &format!("{d_in}"),
            |x| block.forward(x),
            || state(&block),
        );
    }
}

device_test!(brn_properties_generated, brn_properties);

device_test!(conv2d_cbn_properties_generated, conv2d_cbn_properties);

device_test!(conv1d_cbn_properties_generated, conv1d_cbn_properties);

device_test!(conv3d_cbn_properties_generated, conv3d_cbn_properties);

device_test!(linear_cbn_properties_generated, linear_cbn_properties);
