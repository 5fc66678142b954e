//! burn's convolutions and the CBN blocks after them (1D, 2D, 3D) behind
//! one trait, for the checks that read the same at every rank.

use bnorm::core::moments::channel_mean;
use bnorm::{
    Conv1dCbn, Conv2dCbn, Conv3dCbn, CrossIterBatchNorm, CrossIterBatchNormConfig, EpsPlacement,
    LinearCbn,
};
use bnorm_crossiter::{PlainVariance, RunningStatistics};
use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv1d, Conv2d, Conv3d};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use super::random::{host_seeded, uniform};
use super::training::{sgd_steps, state_bytes, StepShapes};
use super::{
    assert_bits_or_close, assert_finite, check_close, check_matmul, check_moment_jacobians,
    is_cube, to_vec,
};

/// A convolution of rank `D` (`[N, C, ...]`), plain or with its CBN.
pub trait ConvLayer<const D: usize> {
    fn run(&self, input: Tensor<D>) -> Tensor<D>;
    fn weight(&self) -> &Param<Tensor<D>>;
    fn bias(&self) -> &Option<Param<Tensor<1>>>;
    /// Replaces the conv's weight and bias.
    fn set_params(&mut self, weight: Tensor<D>, bias: Option<Tensor<1>>);
}

/// A CBN block: its convolution ([`ConvLayer`]) and its normalization.
pub trait CbnBlock<const D: usize>: ConvLayer<D> {
    fn norm(&self) -> &CrossIterBatchNorm;
    /// The block's own convolution alone.
    fn conv_forward(&self, input: Tensor<D>) -> Tensor<D>;
    /// The convolution's weight groups.
    fn groups(&self) -> usize;
}

macro_rules! conv_layer {
    ($layer:ident, $rank:literal $(, $conv:ident)?) => {
        impl ConvLayer<$rank> for $layer {
            fn run(&self, input: Tensor<$rank>) -> Tensor<$rank> {
                self.forward(input)
            }
            fn weight(&self) -> &Param<Tensor<$rank>> {
                &self$(.$conv)?.weight
            }
            fn bias(&self) -> &Option<Param<Tensor<1>>> {
                &self$(.$conv)?.bias
            }
            fn set_params(&mut self, weight: Tensor<$rank>, bias: Option<Tensor<1>>) {
                self$(.$conv)?.weight = Param::from_tensor(weight);
                self$(.$conv)?.bias = bias.map(Param::from_tensor);
            }
        }
    };
}

conv_layer!(Conv1d, 3);
conv_layer!(Conv2d, 4);
conv_layer!(Conv3d, 5);
conv_layer!(Conv1dCbn, 3, conv);
conv_layer!(Conv2dCbn, 4, conv);
conv_layer!(Conv3dCbn, 5, conv);

macro_rules! cbn_block {
    ($($block:ident, $rank:literal);*) => {$(
        impl CbnBlock<$rank> for $block {
            fn norm(&self) -> &CrossIterBatchNorm {
                &self.norm
            }
            fn conv_forward(&self, input: Tensor<$rank>) -> Tensor<$rank> {
                self.conv.forward(input)
            }
            fn groups(&self) -> usize {
                self.conv.groups
            }
        }
    )*};
}

cbn_block!(Conv1dCbn, 3; Conv2dCbn, 4; Conv3dCbn, 5);

// `LinearCbn` as a rank-2 block, for the checks that read the same for a
// linear layer (its weight in burn's `[d_input, d_output]` layout, so not
// for the conv Jacobian check).
conv_layer!(LinearCbn, 2, linear);

impl CbnBlock<2> for LinearCbn {
    fn norm(&self) -> &CrossIterBatchNorm {
        &self.norm
    }
    fn conv_forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.linear.forward(input)
    }
    fn groups(&self) -> usize {
        1
    }
}

/// A BatchNorm with non-trivial learned and running state (host data:
/// the same on every backend).
pub fn trained_batch_norm(c: usize, eps: f64, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(c).with_epsilon(eps).init(device);
    bn.gamma = Param::from_tensor(uniform([c], 1, 0.5, 1.5, device));
    bn.beta = Param::from_tensor(uniform([c], 2, -0.5, 0.5, device));
    bn.running_mean = RunningState::new(uniform([c], 3, -1.0, 1.0, device));
    bn.running_var = RunningState::new(uniform([c], 4, 0.2, 3.0, device));
    bn
}

/// The CBN options under which window 1 is burn's `BatchNorm`: BatchNorm's
/// biased variance, eps inside the root, the window's running statistics.
pub fn window_one_norm() -> CrossIterBatchNormConfig {
    CrossIterBatchNormConfig::new(0)
        .with_window(1)
        .with_plain_variance(PlainVariance::Biased)
        .with_running_statistics(RunningStatistics::Window)
        .with_eps_placement(EpsPlacement::InsideSqrt)
}

/// `cbn`, built with [`window_one_norm`], against burn's `conv` (both given
/// the same host-seeded weight and bias here) followed by burn's
/// `BatchNorm`: outputs, the gradients of the input, conv weight, gamma and
/// beta, and the running statistics over three training steps, then the
/// eval output. Input and output shapes in `shapes`.
pub fn assert_window_one_is_conv_batch_norm<Cbn, Conv, const D: usize>(
    cbn: Cbn,
    mut conv: Conv,
    [x_shape, y_shape]: StepShapes<D>,
    device: &Device,
) where
    Cbn: CbnBlock<D> + Module,
    Conv: ConvLayer<D> + Module,
{
    let cbn = host_seeded(cbn, 90);
    conv.set_params(
        cbn.weight().val().detach(),
        cbn.bias().as_ref().map(|b| b.val().detach()),
    );
    let bn = BatchNormConfig::new(y_shape[1]).init(device);
    for step in 0..3 {
        let x1 = uniform::<D>(x_shape, step, -1.0, 2.0, device).require_grad();
        let x2 = uniform::<D>(x_shape, step, -1.0, 2.0, device).require_grad();
        let g = uniform::<D>(y_shape, 50 + step, -1.0, 1.0, device);
        let y1 = cbn.run(x1.clone());
        let y2 = bn.forward(conv.run(x2.clone()));
        let what = format!("step {step}");
        check_close(
            &format!("{what} output"),
            &y1.clone().into_data(),
            &y_shape,
            &to_vec(y2.clone()),
            1e-5,
            1e-5,
        )
        .unwrap();
        let g1 = y1.mul(g.clone()).sum().backward();
        let g2 = y2.mul(g).sum().backward();
        // Through each side's convolution backward: on CUDA, TF32 kernels
        // whose inputs (the two normalizations' gradients) differ in the
        // last float32 bits, rounded to 10 mantissa bits (an H100 run: 2 of
        // 150 grad-x elements 4.6e-5 apart).
        let through_conv = [
            (
                "grad x",
                to_vec(x1.grad(&g1).unwrap()),
                to_vec(x2.grad(&g2).unwrap()),
            ),
            (
                "grad W",
                to_vec(cbn.weight().grad(&g1).unwrap()),
                to_vec(conv.weight().grad(&g2).unwrap()),
            ),
        ];
        for (name, a, b) in through_conv {
            let data = TensorData::new(a.clone(), [a.len()]);
            check_matmul(device, &format!("{what} {name}"), &data, &[b.len()], &b).unwrap();
        }
        let norm = cbn.norm();
        let norm_side = [
            (
                "grad gamma",
                to_vec(norm.gamma.as_ref().unwrap().grad(&g1).unwrap()),
                to_vec(bn.gamma.grad(&g2).unwrap()),
            ),
            (
                "grad beta",
                to_vec(norm.beta.as_ref().unwrap().grad(&g1).unwrap()),
                to_vec(bn.beta.grad(&g2).unwrap()),
            ),
            (
                "running mean",
                to_vec(norm.running_mean.value_sync()),
                to_vec(bn.running_mean.value_sync()),
            ),
            (
                "running var",
                to_vec(norm.running_var.value_sync()),
                to_vec(bn.running_var.value_sync()),
            ),
        ];
        for (name, a, b) in norm_side {
            let data = TensorData::new(a.clone(), [a.len()]);
            check_close(&format!("{what} {name}"), &data, &[b.len()], &b, 1e-4, 1e-5).unwrap();
        }
    }
    let x = || uniform::<D>(x_shape, 9, -1.0, 1.0, device);
    let eval_cbn = cbn.valid().run(x());
    let eval_bn = bn.valid().forward(conv.valid().run(x()));
    check_close(
        "eval output",
        &eval_cbn.into_data(),
        &y_shape,
        &to_vec(eval_bn),
        1e-5,
        1e-5,
    )
    .unwrap();
}

/// `given(block, x)` — the block's `forward_conv_output` fed `x` and its
/// own conv's output — trains as `block.run(x)`: seven SGD steps from
/// `start()` on each (through whatever burn-in and window `start()` has),
/// every step's output and conv weight gradient bit for bit, then every
/// state tensor (the records' bytes) and the eval output. On wgpu within
/// `check_matmul`'s tolerance, the state through the eval output (see
/// `cbn_forward_conv_output_is_forward`). Returns the two trained blocks
/// (direct, given).
pub fn assert_conv_output_given_is_forward<M, const D: usize>(
    start: impl Fn() -> M,
    shapes @ [x_shape, _]: StepShapes<D>,
    given: impl Fn(&M, Tensor<D>) -> Tensor<D>,
    device: &Device,
) -> (M, M)
where
    M: CbnBlock<D> + Module,
{
    let same =
        |what: &str, a: &TensorData, b: &TensorData| assert_bits_or_close(device, what, a, b);
    let grad_of = |m: &M, grads: &Gradients| m.weight().grad(grads).unwrap().into_data();
    let steps = |module, forward: &dyn Fn(&M, Tensor<D>) -> Tensor<D>| {
        sgd_steps(module, (0, 7), shapes, &forward, &grad_of, device)
    };
    let (direct, out_direct, grad_direct) = steps(start(), &|m: &M, x| m.run(x));
    let (via_given, out_given, grad_given) = steps(start(), &given);
    for step in 0..7 {
        same(
            &format!("output of step {step}"),
            &out_given[step],
            &out_direct[step],
        );
        same(
            &format!("conv weight gradient of step {step}"),
            &grad_given[step],
            &grad_direct[step],
        );
    }
    if !is_cube(device) {
        assert!(
            state_bytes(&direct) == state_bytes(&via_given),
            "state after forward_conv_output differs from forward's"
        );
    }
    let x = || uniform::<D>(x_shape, 9, -1.0, 1.0, device);
    same(
        "eval output",
        &via_given.valid().run(x()).into_data(),
        &direct.valid().run(x()).into_data(),
    );
    (direct, via_given)
}

/// The history entry a training step of `layer` (a window of at least 2,
/// given a host-seeded weight from `seed`) records on input `x` holds the
/// Jacobians of that step's moments: per channel, autodiff's gradients of
/// `mean_c` and `meansq_c` of the block's own conv output with respect to
/// its weight. So the block hands its padding, stride, dilation and groups
/// to the Jacobians as burn's convolution applies them.
pub fn assert_records_its_conv_jacobians<B, const D: usize>(
    what: &str,
    mut layer: B,
    x: Tensor<D>,
    seed: u64,
) where
    B: CbnBlock<D> + Module,
{
    let device = x.device();
    let w_dims = layer.weight().dims();
    let (c, f) = (w_dims[0], w_dims[1..].iter().product::<usize>());
    let bias = layer.bias().as_ref().map(|b| b.val());
    layer.set_params(uniform(w_dims, seed, -0.4, 0.4, &device), bias);
    let _ = layer.run(x.clone());
    let history = layer.norm().history.as_ref().unwrap();
    let recorded_p = history.jac_mean.value_sync().narrow(0, 0, 1);
    let recorded_q = history.jac_mean_sq.value_sync().narrow(0, 0, 1);
    let autodiff = |square: bool| {
        let y = layer.conv_forward(x.clone());
        let y = if square { y.square() } else { y };
        let grads = channel_mean(y).sum().backward();
        let grad = layer.weight().grad(&grads).unwrap();
        to_vec(grad.reshape([c, f]))
    };
    check_moment_jacobians(
        &format!("{what} recorded"),
        (
            recorded_p.reshape([layer.groups(), f]),
            recorded_q.reshape([c, f]),
        ),
        Tensor::ones([c], &device),
        (&autodiff(false), &autodiff(true)),
    );
}

/// `layer` (window 3, burn-in 1, host-seeded here) trained on inputs of
/// `x_shape` that hold one value per channel (a batch of one, one
/// position): output and the gradients of the input and the weight stay
/// finite through burn-in and a full window, and so does the eval output.
/// Failures are named after `what`.
pub fn assert_single_value_is_finite<B, const D: usize>(
    what: &str,
    layer: B,
    x_shape: [usize; D],
    device: &Device,
) where
    B: CbnBlock<D> + Module,
{
    assert!(
        x_shape[0] == 1 && x_shape[2..].iter().all(|&d| d == 1),
        "{what}: one value per channel, got {x_shape:?}"
    );
    let layer = host_seeded(layer, 1);
    for step in 0..5 {
        let x = uniform::<D>(x_shape, step, -1.0, 1.0, device).require_grad();
        let y = layer.run(x.clone());
        let what = format!("{what} step {step}");
        assert_finite(&format!("{what} output"), &y.clone().into_data());
        let grads = y.sum().backward();
        assert_finite(
            &format!("{what} grad x"),
            &x.grad(&grads).unwrap().into_data(),
        );
        assert_finite(
            &format!("{what} grad W"),
            &layer.weight().grad(&grads).unwrap().into_data(),
        );
    }
    assert_eq!(layer.norm().history_len(), 2, "{what}");
    let eval = layer.valid().run(uniform(x_shape, 9, -1.0, 1.0, device));
    assert_finite(&format!("{what} eval"), &eval.into_data());
}
