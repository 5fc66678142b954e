//! ndarray vs another backend (flex always, wgpu with `--features wgpu`;
//! one rstest case each): the same inputs, parameters
//! and state through both backends, several training steps and an eval
//! step, comparing outputs, gradients and every recorded state tensor; and
//! a checkpoint written on one backend continued on the other.
//!
//! Tolerance: float32 reductions run in a different order on another
//! backend (parallel trees vs sequential sums), so each sum's rounding error scales
//! with the magnitude of its summands, not of its result: we compare
//! elementwise with `|a - b| <= r * |b| + r * max|b|` (relative, plus an
//! absolute floor relative to the tensor's own scale, so values that cancel
//! to near zero are judged against the size of what cancelled).
//! `r = 1e-4` (the reference fixtures') for BRN and the CBN blocks
//! (float32 matmuls and convolutions on every backend here). A conv bias, whose
//! gradient is a sum that cancels, gets a floor from that sum's terms
//! (`conv_output_grad_norm`). The CBN cases start every step from the same
//! state on both backends (`resync`), after comparing what the step wrote;
//! BRN's continue on their own (float32 throughout, nothing to amplify).

use crate::common;

use bnorm::core::moments::channel_sum;
use bnorm::{
    BatchRenorm, BatchRenormConfig, BurnInMode, Conv1dCbnConfig, Conv2dCbn, Conv2dCbnConfig,
    Conv3dCbnConfig, CrossIterBatchNormConfig, LinearCbn, LinearCbnConfig,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{PaddingConfig1d, PaddingConfig2d, PaddingConfig3d};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::Device;
use burn::tensor::{Bool, Tensor, TensorData};
use common::blocks::CbnBlock;
use common::random::{host_seeded, uniform};
use common::*;
use rstest::rstest;

fn check_parity_at(r: f32, what: &str, gpu: &TensorData, cpu: &TensorData) {
    check_parity_floor(r, 0.0, what, gpu, cpu);
}

/// [`check_parity_at`] with an absolute floor of at least `floor`.
fn check_parity_floor(r: f32, floor: f32, what: &str, gpu: &TensorData, cpu: &TensorData) {
    let expected: Vec<f32> = cpu.try_to_vec::<f32>().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let atol = (r * scale.max(1e-6)).max(floor);
    check_close(what, gpu, cpu.shape(), &expected, r, atol).unwrap();
}

/// Every float tensor of a module (parameters and running state), in
/// visiting order with its path.
struct Collect {
    path: Vec<String>,
    out: Vec<(String, TensorData)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out
            .push((self.path.join("."), owned(param.val().into_data())));
    }
}

/// The module's state (running states synchronised by `valid()`).
fn state<M: Module>(module: &M) -> Vec<(String, TensorData)> {
    let mut collect = Collect {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.valid().visit(&mut collect);
    collect.out
}

fn compare_state(r: f32, what: &str, gpu: &[(String, TensorData)], cpu: &[(String, TensorData)]) {
    compare_state_floors(r, &[], what, gpu, cpu);
}

/// [`compare_state`] with absolute floors for the named tensors.
fn compare_state_floors(
    r: f32,
    floors: &[(&str, f32)],
    what: &str,
    gpu: &[(String, TensorData)],
    cpu: &[(String, TensorData)],
) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: state tensor count");
    for ((name, a), (_, b)) in gpu.iter().zip(cpu) {
        let floor = floors
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |&(_, f)| f);
        check_parity_floor(r, floor, &format!("{what}: state {name}"), a, b);
    }
}

/// Copies `module`'s state into `target` on the other backend through
/// burn's record system, and returns `module` with the same (now
/// materialized) values: burn initializes parameters lazily and a clone of
/// an uninitialized module would draw its own.
fn transfer<M: Module>(module: M, target: M) -> (M, M) {
    let record = module.clone().into_record();
    (
        module.load_record(record.clone()),
        target.load_record(record),
    )
}

/// Both modules after a compared step, each starting the next step from
/// the ndarray module's state (moved through the record system, history
/// and counters included). Why: a CBN step's rounding on one backend is
/// the next step's input there, and SGD amplifies it: on CUDA, whose TF32
/// convolution rounds ~1e-3, an H100 run in which each backend continued
/// on its own state had an output of the ramp case 1.7e-2 apart at step 7
/// (1.3 times the tolerance; the run before passed). The state each step
/// writes is compared before this, so every step's update is still checked;
/// continuing across backends is `checkpoint_crosses_backends`.
fn resync<M: Module>(cpu: M, gpu: M) -> (M, M) {
    transfer(cpu, gpu)
}

/// The parity tolerance of results through a convolution or matmul
/// (float32 on every backend here, as reductions and elementwise math).
const MATMUL_PARITY: f32 = RTOL;

/// One training step of a module with a generic forward: returns output,
/// input gradient and the module after an SGD step.
macro_rules! step {
    ($module:expr, $x:expr, $g:expr, $forward:expr, $lr:expr) => {{
        let module = $module;
        let x = $x.require_grad();
        let y = $forward(&module, x.clone());
        let grads = y.clone().mul($g).sum().backward();
        let gx = owned(x.grad(&grads).unwrap().into_data());
        let mut optim = SgdConfig::new().init();
        let params = GradientsParams::from_grads(grads, &module);
        let y = owned(y.into_data());
        (y, gx, optim.step($lr, module, params))
    }};
}

/// [`brn_rank`] at the rank of `shape` (one generic argument, for
/// `on_device!`).
fn brn_case(gpu_dev: &Device, shape: &[usize], masked: bool) {
    match shape.len() {
        2 => brn_rank::<2>(gpu_dev, shape.try_into().unwrap(), masked),
        3 => brn_rank::<3>(gpu_dev, shape.try_into().unwrap(), masked),
        4 => brn_rank::<4>(gpu_dev, shape.try_into().unwrap(), masked),
        5 => brn_rank::<5>(gpu_dev, shape.try_into().unwrap(), masked),
        rank => panic!("no BRN parity case of rank {rank}"),
    }
}

fn brn_rank<const D: usize>(gpu_dev: &Device, shape: [usize; D], masked: bool) {
    let cpu_dev = common::baseline();
    let config = BatchRenormConfig::new(shape[1]).with_steps_compressed_to(6);
    let (mut cpu, mut gpu): (BatchRenorm, BatchRenorm) =
        transfer(config.init(&cpu_dev), config.init(gpu_dev));
    // Every fourth position of each sequence is padding.
    let mask: Option<Vec<bool>> =
        masked.then(|| (0..shape[0] * shape[D - 1]).map(|i| i % 4 == 3).collect());
    for step in 0..7u64 {
        let what = format!("BRN {shape:?} masked={masked} step {step}");
        let forward_cpu = |m: &BatchRenorm, x: Tensor<D>| match mask.clone() {
            Some(mk) => {
                let x3: Tensor<3> = x.reshape([shape[0], shape[1], shape[D - 1]]);
                let mk = Tensor::<2, Bool>::from_data(
                    TensorData::new(mk, [shape[0], shape[D - 1]]),
                    &cpu_dev,
                );
                m.forward_masked(x3, mk).reshape(shape)
            }
            None => m.forward(x),
        };
        let forward_gpu = |m: &BatchRenorm, x: Tensor<D>| match mask.clone() {
            Some(mk) => {
                let x3: Tensor<3> = x.reshape([shape[0], shape[1], shape[D - 1]]);
                let mk = Tensor::<2, Bool>::from_data(
                    TensorData::new(mk, [shape[0], shape[D - 1]]),
                    gpu_dev,
                );
                m.forward_masked(x3, mk).reshape(shape)
            }
            None => m.forward(x),
        };
        let (y1, g1, next_cpu) = step!(
            cpu,
            uniform::<D>(shape, step, -1.0, 3.0, &cpu_dev),
            uniform::<D>(shape, 100 + step, -1.0, 1.0, &cpu_dev),
            forward_cpu,
            0.05
        );
        let (y2, g2, next_gpu) = step!(
            gpu,
            uniform::<D>(shape, step, -1.0, 3.0, gpu_dev),
            uniform::<D>(shape, 100 + step, -1.0, 1.0, gpu_dev),
            forward_gpu,
            0.05
        );
        check_parity_at(RTOL, &format!("{what} output"), &y2, &y1);
        check_parity_at(RTOL, &format!("{what} grad input"), &g2, &g1);
        compare_state(RTOL, &what, &state(&next_gpu), &state(&next_cpu));
        cpu = next_cpu;
        gpu = next_gpu;
    }
    let x_cpu = uniform::<D>(shape, 77, -1.0, 3.0, &cpu_dev);
    let x_gpu = uniform::<D>(shape, 77, -1.0, 3.0, gpu_dev);
    check_parity_at(
        RTOL,
        &format!("BRN {shape:?} eval"),
        &gpu.valid().forward(x_gpu).into_data(),
        &cpu.valid().forward(x_cpu).into_data(),
    );
}

// One test per case (every rank, masked; each runs the schedule's ramp), so
// a runner with a process per test (tools/gpu-test-parallel.sh) compiles
// their kernels in parallel.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_parity_rank_2(#[case] device: TestDevice) {
    on_device!(device, brn_case, &[4, 3], false);
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_parity_rank_3(#[case] device: TestDevice) {
    on_device!(device, brn_case, &[2, 3, 5], false);
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_parity_rank_3_masked(#[case] device: TestDevice) {
    on_device!(device, brn_case, &[2, 3, 8], true);
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_parity_rank_4(#[case] device: TestDevice) {
    on_device!(device, brn_case, &[2, 3, 4, 4], false);
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn brn_parity_rank_5(#[case] device: TestDevice) {
    on_device!(device, brn_case, &[2, 2, 3, 3, 2], false);
}

fn conv_case(gpu_dev: &Device, config: Conv2dCbnConfig, input: [usize; 4], lr: f64, name: &str) {
    let cpu_dev = common::baseline();
    let r = MATMUL_PARITY;
    let (mut cpu, mut gpu): (Conv2dCbn, Conv2dCbn) =
        transfer(host_seeded(config.init(&cpu_dev), 1), config.init(gpu_dev));
    let out_shape = {
        let y = cpu.valid().forward(uniform(input, 0, 0.0, 1.0, &cpu_dev));
        y.dims()
    };
    for step in 0..8u64 {
        let what = format!("{name} step {step}");
        // The conv bias's floor (see `conv_output_grad_norm`).
        let bias_floor = 3.0
            * r
            * lr as f32
            * conv_output_grad_norm(
                &config,
                &cpu,
                uniform(input, step, -1.0, 2.0, &cpu_dev),
                uniform(out_shape, 300 + step, -1.0, 1.0, &cpu_dev),
            );
        let fwd_cpu = |m: &Conv2dCbn, x| m.forward(x);
        let fwd_gpu = |m: &Conv2dCbn, x| m.forward(x);
        let (y1, g1, next_cpu) = step!(
            cpu,
            uniform::<4>(input, step, -1.0, 2.0, &cpu_dev),
            uniform::<4>(out_shape, 300 + step, -1.0, 1.0, &cpu_dev),
            fwd_cpu,
            lr
        );
        let (y2, g2, next_gpu) = step!(
            gpu,
            uniform::<4>(input, step, -1.0, 2.0, gpu_dev),
            uniform::<4>(out_shape, 300 + step, -1.0, 1.0, gpu_dev),
            fwd_gpu,
            lr
        );
        check_parity_at(r, &format!("{what} output"), &y2, &y1);
        check_parity_at(r, &format!("{what} grad input"), &g2, &g1);
        compare_state_floors(
            r,
            &[("conv.bias", bias_floor)],
            &what,
            &state(&next_gpu),
            &state(&next_cpu),
        );
        (cpu, gpu) = resync(next_cpu, next_gpu);
    }
    assert_eq!(
        cpu.norm.history_len(),
        gpu.norm.history_len(),
        "{name}: history fill"
    );
    let x_cpu = uniform(input, 99, -1.0, 2.0, &cpu_dev);
    let x_gpu = uniform(input, 99, -1.0, 2.0, gpu_dev);
    check_parity_at(
        r,
        &format!("{name} eval"),
        &gpu.valid().forward(x_gpu).into_data(),
        &cpu.valid().forward(x_cpu).into_data(),
    );
}

/// The size of what cancels in a conv bias's gradient. The bias gradient
/// of a training step is `sum over batch and positions of dL/dz` (`z` the
/// convolution's output), whose terms largely cancel (the normalization
/// subtracts their mean); its rounding error scales with the terms, not
/// with the result, and the SGD step adds `lr` times that error to the
/// bias, however small the bias's own values. Rounding errors of
/// independent terms add like a random walk (Higham & Mary's probabilistic
/// bound: `u * sqrt(sum t_i^2)` rather than the worst case `u * sum |t_i|`),
/// so after a step the bias is given three times that estimate as its
/// floor, `3 r lr |dL/dz|_2`. (An H100 run, TF32 giving `z` ~1e-3 relative
/// error, had the ramp case's bias 1.3e-3 apart after six steps on each
/// backend's own state: four times `r` times the bias's largest value.)
/// Returns the largest channel's `|dL/dz|_2` for one step of `module` on
/// `x` with upstream gradient `g`, computed on a copy (the module's state
/// is untouched).
fn conv_output_grad_norm(
    config: &Conv2dCbnConfig,
    module: &Conv2dCbn,
    x: Tensor<4>,
    g: Tensor<4>,
) -> f32 {
    // Loaded into a fresh module: a clone would share the running buffers.
    let copy = config
        .init(&x.device())
        .load_record(module.clone().into_record());
    let z = copy.conv.forward(x.clone()).detach().require_grad();
    let grads = copy
        .forward_conv_output(x, z.clone())
        .mul(g)
        .sum()
        .backward();
    let dz = z.grad(&grads).expect("dL/dz");
    let per_channel: Vec<f32> = channel_sum(dz.square())
        .sqrt()
        .into_data()
        .try_to_vec()
        .unwrap();
    per_channel.into_iter().fold(0.0, f32::max)
}

/// Ramp burn-in into a full window, stride, groups, bias.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv_parity_ramp_burn_in(#[case] device: TestDevice) {
    on_device!(
        device,
        conv_case,
        Conv2dCbnConfig::new([4, 6], [3, 3])
            .with_stride([2, 1])
            .with_groups(2)
            .with_padding(PaddingConfig2d::Same)
            .with_norm(
                CrossIterBatchNormConfig::new(0)
                    .with_window(4)
                    .with_burn_in(3)
                    .with_burn_in_mode(BurnInMode::Ramp),
            ),
        [2, 4, 7, 6],
        0.05,
        "conv ramp",
    );
}

/// Reference settings, two-stage burn-in, batch of one.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv_parity_reference_batch_of_one(#[case] device: TestDevice) {
    on_device!(
        device,
        conv_case,
        Conv2dCbnConfig::new([2, 3], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .with_norm(
                CrossIterBatchNormConfig::new(0)
                    .with_window(3)
                    .with_burn_in(2)
                    .reference(),
            ),
        [1, 2, 5, 5],
        0.05,
        "conv reference",
    );
}

/// Large steps: stale entries whose compensated variance turns negative get
/// dropped.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv_parity_negative_variance_drop(#[case] device: TestDevice) {
    on_device!(
        device,
        conv_case,
        Conv2dCbnConfig::new([2, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .with_norm(CrossIterBatchNormConfig::new(0).with_window(5).reference()),
        [1, 2, 4, 4],
        0.6,
        "conv large drift",
    );
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_linear_parity(#[case] device: TestDevice) {
    on_device!(device, linear_case);
}

/// `steps` training steps of a block on ndarray and on `G` from the same
/// state, comparing output, input gradient and every state tensor after
/// each (then resynchronized, see [`resync`]) at tolerance `r`: inputs
/// `input` and upstream gradients of shape `output`, SGD at `lr`.
#[allow(clippy::too_many_arguments)]
fn block_parity<M, const D: usize>(
    gpu_dev: &Device,
    (mut cpu, mut gpu): (M, M),
    [input, output]: [[usize; D]; 2],
    (steps, lr, r): (u64, f64, f32),
    name: &str,
    fwd_cpu: impl Fn(&M, Tensor<D>) -> Tensor<D>,
    fwd_gpu: impl Fn(&M, Tensor<D>) -> Tensor<D>,
) -> (M, M)
where
    M: Module,
{
    let cpu_dev = common::baseline();
    for step in 0..steps {
        let what = format!("{name} step {step}");
        let (y1, g1, next_cpu) = step!(
            cpu,
            uniform::<D>(input, step, -1.0, 1.0, &cpu_dev),
            uniform::<D>(output, 40 + step, -1.0, 1.0, &cpu_dev),
            fwd_cpu,
            lr
        );
        let (y2, g2, next_gpu) = step!(
            gpu,
            uniform::<D>(input, step, -1.0, 1.0, gpu_dev),
            uniform::<D>(output, 40 + step, -1.0, 1.0, gpu_dev),
            fwd_gpu,
            lr
        );
        check_parity_at(r, &format!("{what} output"), &y2, &y1);
        check_parity_at(r, &format!("{what} grad input"), &g2, &g1);
        compare_state(r, &what, &state(&next_gpu), &state(&next_cpu));
        (cpu, gpu) = resync(next_cpu, next_gpu);
    }
    (cpu, gpu)
}

fn linear_case(gpu_dev: &Device) {
    let config = LinearCbnConfig::new(5, 4).with_window(3);
    block_parity(
        gpu_dev,
        transfer(
            host_seeded(config.init(&common::baseline()), 1),
            config.init(gpu_dev),
        ),
        [[2, 3, 5], [2, 3, 4]],
        (6, 0.05, MATMUL_PARITY),
        "linear",
        |m: &LinearCbn, x| m.forward(x),
        |m: &LinearCbn, x| m.forward(x),
    );
}

/// A CBN conv block of any rank through [`block_parity`] (six steps, SGD
/// at 0.05), its window then holding `fill` entries, and eval.
fn conv_block_case<M, const D: usize>(
    gpu_dev: &Device,
    (cpu, gpu): (M, M),
    shapes: [[usize; D]; 2],
    name: &str,
    fill: usize,
) where
    M: CbnBlock<D> + Module,
{
    let r = MATMUL_PARITY;
    let (cpu, gpu) = block_parity(
        gpu_dev,
        (cpu, gpu),
        shapes,
        (6, 0.05, r),
        name,
        |m: &M, x| m.run(x),
        |m: &M, x| m.run(x),
    );
    assert_eq!(gpu.norm().history_len(), fill, "{name} history fill");
    check_parity_at(
        r,
        &format!("{name} eval"),
        &gpu.valid()
            .run(uniform(shapes[0], 99, -1.0, 2.0, gpu_dev))
            .into_data(),
        &cpu.valid()
            .run(uniform(shapes[0], 99, -1.0, 2.0, &common::baseline()))
            .into_data(),
    );
}

/// The CBN options of the rank-1 and rank-3 conv cases: two-stage burn-in
/// into a full window of 3.
fn burn_in_into_window_of_three() -> CrossIterBatchNormConfig {
    CrossIterBatchNormConfig::new(0)
        .with_window(3)
        .with_burn_in(2)
}

/// `Conv3dCbn`: two-stage burn-in into a full window at batch size 1,
/// stride and dilation (no conv bias: its gradient is a sum that cancels,
/// see `conv_output_grad_norm`), then eval.
fn conv3d_case(gpu_dev: &Device) {
    let config = Conv3dCbnConfig::new([2, 3], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .with_stride([1, 2, 1])
        .with_dilation([1, 1, 2])
        .with_bias(false)
        .with_norm(burn_in_into_window_of_three());
    conv_block_case(
        gpu_dev,
        transfer(
            host_seeded(config.init(&common::baseline()), 1),
            config.init(gpu_dev),
        ),
        [[1, 2, 3, 5, 6], [1, 3, 3, 3, 4]],
        "conv3d",
        2,
    );
}

#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv3d_parity(#[case] device: TestDevice) {
    on_device!(device, conv3d_case);
}

/// A `Conv1dCbn` block (no bias, burn-in into a window of 3) through
/// [`conv_block_case`].
fn conv1d_case(gpu_dev: &Device, config: Conv1dCbnConfig, shapes: [[usize; 3]; 2], name: &str) {
    let config = config
        .with_bias(false)
        .with_norm(burn_in_into_window_of_three());
    conv_block_case(
        gpu_dev,
        transfer(
            host_seeded(config.init(&common::baseline()), 1),
            config.init(gpu_dev),
        ),
        shapes,
        name,
        2,
    );
}

/// `Conv1dCbn` at batch size 1 with stride, dilation, groups and padding
/// on one side only.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv1d_parity(#[case] device: TestDevice) {
    let config = Conv1dCbnConfig::new(4, 6, 3)
        .with_padding(PaddingConfig1d::Explicit(2, 0))
        .with_stride(2)
        .with_dilation(2)
        .with_groups(2);
    on_device!(
        device,
        conv1d_case,
        config,
        [[1, 4, 13], [1, 6, 6]],
        "conv1d"
    );
}

/// `Conv1dCbn` with one output position per sample: burn-cubecl's `conv1d`
/// leaves such an output strided (`[2, 3, 1]` with strides `[9, 3, 3]`
/// after a stride-6 conv; likewise here, where the kernel spans the
/// input), and under burn-fusion 0.21 a reshape of it to another rank
/// reads back wrong (see `bnorm_core::conv1d_jacobian`): the block must
/// not take one. (Not with a stride longer than the kernel: burn-cubecl
/// 0.21's conv input gradient is wrong there on wgpu, burn's `Conv1d` and
/// `Conv2d` alike; see docs/gpu.md.)
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn cbn_conv1d_parity_one_output_position(#[case] device: TestDevice) {
    let config = Conv1dCbnConfig::new(2, 3, 5);
    on_device!(
        device,
        conv1d_case,
        config,
        [[4, 2, 5], [4, 3, 1]],
        "conv1d one position"
    );
}

/// A checkpoint written on ndarray continues on the GPU backend (and back)
/// like the run that stayed on ndarray.
#[rstest]
#[case::flex(TestDevice::Flex)]
#[cfg_attr(feature = "wgpu", case::wgpu(TestDevice::Wgpu))]
#[cfg_attr(feature = "cuda", case::cuda(TestDevice::Cuda))]
fn checkpoint_crosses_backends(#[case] device: TestDevice) {
    on_device!(device, checkpoint_case);
}

fn checkpoint_case(gpu_dev: &Device) {
    let cpu_dev = common::baseline();
    let r = MATMUL_PARITY;
    let config = Conv2dCbnConfig::new([2, 3], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_norm(CrossIterBatchNormConfig::new(0).with_window(4));
    let fwd_cpu = |m: &Conv2dCbn, x| m.forward(x);
    let fwd_gpu = |m: &Conv2dCbn, x| m.forward(x);
    let mut cpu: Conv2dCbn = host_seeded(config.init(&cpu_dev), 1);
    for step in 0..4u64 {
        cpu = step!(
            cpu,
            uniform::<4>([1, 2, 5, 5], step, -1.0, 1.0, &cpu_dev),
            uniform::<4>([1, 3, 5, 5], 9 + step, -1.0, 1.0, &cpu_dev),
            fwd_cpu,
            0.05
        )
        .2;
    }
    let dir = std::env::temp_dir().join(format!("bnorm-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    cpu.clone().save_file(dir.join("cpu.bpk")).unwrap();
    let mut gpu = config
        .init(gpu_dev)
        .load_checkpoint(dir.join("cpu.bpk"))
        .unwrap();
    compare_state(r, "loaded on the GPU backend", &state(&gpu), &state(&cpu));
    for step in 4..8u64 {
        let (y1, _, next_cpu) = step!(
            cpu,
            uniform::<4>([1, 2, 5, 5], step, -1.0, 1.0, &cpu_dev),
            uniform::<4>([1, 3, 5, 5], 9 + step, -1.0, 1.0, &cpu_dev),
            fwd_cpu,
            0.05
        );
        let (y2, _, next_gpu) = step!(
            gpu,
            uniform::<4>([1, 2, 5, 5], step, -1.0, 1.0, gpu_dev),
            uniform::<4>([1, 3, 5, 5], 9 + step, -1.0, 1.0, gpu_dev),
            fwd_gpu,
            0.05
        );
        check_parity_at(r, &format!("continued step {step} output"), &y2, &y1);
        cpu = next_cpu;
        gpu = next_gpu;
    }
    compare_state(
        r,
        "continued on the GPU backend",
        &state(&gpu),
        &state(&cpu),
    );
    // And back: the GPU state loads on ndarray.
    gpu.save_file(dir.join("gpu.bpk")).unwrap();
    let back = config
        .init(&cpu_dev)
        .load_checkpoint(dir.join("gpu.bpk"))
        .unwrap();
    compare_state(r, "GPU checkpoint on ndarray", &state(&back), &state(&cpu));
    std::fs::remove_dir_all(&dir).ok();
}
