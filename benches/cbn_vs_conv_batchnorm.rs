//! Conv2dCbn (3x3, same channels in and out, window 8) forward + backward
//! against burn's Conv2d + BatchNorm, side by side in one run, ratios
//! printed at the end, with the same layer at window 1 as a breakdown.
//!
//! ```sh
//! cargo bench --bench cbn_vs_conv_batchnorm                    # ndarray and flex
//! BNORM_BENCH_WINDOW_PARTS=1 BNORM_BENCH_SHAPES=1x8x8x8 cargo bench --bench cbn_vs_conv_batchnorm
//! ```
//!
//! `BNORM_BENCH_WINDOW_PARTS=1` also measures window 8 without the
//! compensation, without the backward pass through the history and
//! without the state guard, the Jacobians alone (without autodiff), and
//! one weight-gradient convolution with `C` output channels against one
//! with `2C` (what `Q` would cost stacked onto the conv's own weight
//! gradient in the backward pass); `BNORM_BENCH_SHAPES` picks shapes;
//! `BNORM_BENCH_BACKENDS` backends.

mod common;

use bnorm::core::{conv2d_moment_jacobians, Conv2dGeometry};
use bnorm::{Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::module::conv2d_weight_backward;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor};
use common::{print_ratios, settle, shape_name, shapes, train_step};
use criterion::{BenchmarkId, Criterion};

fn bench_backend(c: &mut Criterion, backend: &str, device: &Device) -> Vec<String> {
    let mut groups = Vec::new();
    for shape in shapes() {
        let channels = shape[1];
        let name = format!("cbn-{backend}-{}", shape_name(shape));
        let mut group = c.benchmark_group(&name);
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
        let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(channels).init(device);
        // The layer under test with a given normalization, all else equal.
        let cbn_with = |norm: CrossIterBatchNormConfig| {
            Conv2dCbnConfig::new([channels, channels], [3, 3])
                .with_padding(padding.clone())
                .with_bias(false)
                .with_norm(norm)
                .init(device)
        };
        let window = |k: usize| CrossIterBatchNormConfig::new(0).with_window(k);
        // The breakdown: window 1 is plain BatchNorm statistics through the
        // same layer (no history, no Jacobians), so `k1 / Conv2d+BatchNorm`
        // is the layer's own overhead and `Conv2dCbn / k1` the window's.
        let cbn_k1 = cbn_with(window(1));
        let cbn = cbn_with(window(8));
        // Window 8 with parts of the window's work taken away (opt-in,
        // `BNORM_BENCH_WINDOW_PARTS=1`): `rho = 0` skips the compensation
        // (Jacobians still computed and recorded), a constant history skips
        // the backward pass through it, and the state guard off.
        let parts = window_parts().then(|| {
            [
                ("Conv2dCbn-rho0", cbn_with(window(8).with_rho(0.0))),
                (
                    "Conv2dCbn-const-history",
                    cbn_with(window(8).with_history_gradient(false)),
                ),
                (
                    "Conv2dCbn-no-guard",
                    cbn_with(window(8).with_state_guard(false)),
                ),
            ]
        });
        // Fill the windows first: the steady state is what training sees.
        let windows = std::iter::once(&cbn).chain(parts.iter().flatten().map(|(_, m)| m));
        for layer in windows {
            for _ in 0..8 {
                let _ = layer.forward(x.clone()).sum().backward();
            }
        }
        let conv_bn_step = || train_step(&x, |x| bn.forward(conv.forward(x)));
        let cbn_k1_step = || train_step(&x, |x| cbn_k1.forward(x));
        let norm_step = || train_step(&x, |x| cbn.forward(x));
        settle(&format!("{name}/Conv2d+BatchNorm"), conv_bn_step);
        settle(&format!("{name}/Conv2dCbn-k1"), cbn_k1_step);
        settle(&format!("{name}/Conv2dCbn"), norm_step);
        group.bench_function(BenchmarkId::from_parameter("Conv2d+BatchNorm"), |b| {
            b.iter(conv_bn_step)
        });
        group.bench_function(BenchmarkId::from_parameter("Conv2dCbn-k1"), |b| {
            b.iter(cbn_k1_step)
        });
        group.bench_function(BenchmarkId::from_parameter("Conv2dCbn"), |b| {
            b.iter(norm_step)
        });
        for (label, layer) in parts.iter().flatten() {
            let step = || train_step(&x, |x| layer.forward(x));
            settle(&format!("{name}/{label}"), step);
            group.bench_function(BenchmarkId::from_parameter(*label), |b| b.iter(step));
        }
        if parts.is_some() {
            // The Jacobians alone (patch sums and the `Q` weight gradient),
            // without autodiff, as the layer runs them.
            let values = (x.clone().inner(), conv.forward(x.clone()).inner());
            let jacobians = || jacobians_step(&values);
            settle(&format!("{name}/Jacobians-inner"), jacobians);
            group.bench_function(BenchmarkId::from_parameter("Jacobians-inner"), |b| {
                b.iter(jacobians)
            });
            // `Q` in the backward pass: burn's
            // Conv2d backward already runs one weight-gradient convolution
            // of `x` with `dL/dy` (`C` output channels); with `2y/M`
            // stacked onto `dL/dy` it would give `Q` too (`2C` channels,
            // the same reduction). The stacked one's extra time over the
            // plain one is what `Q` would cost there; the plain one is
            // about what `Q` costs now. (`y` is stacked unscaled: the
            // scale by `2/M` is one elementwise kernel either way.)
            let (x_values, y_values) = values;
            let output_grad = y_values.random_like(Distribution::Normal(0.0, 1.0));
            let plain = || weight_gradient(&x_values, output_grad.clone());
            let stacked = || {
                let both = Tensor::cat(vec![output_grad.clone(), y_values.clone()], 1);
                weight_gradient(&x_values, both)
            };
            for (label, work) in [
                ("Weight-gradient-C", &plain as &dyn Fn()),
                ("Weight-gradient-2C-stacked", &stacked),
            ] {
                settle(&format!("{name}/{label}"), work);
                group.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(work));
            }
        }
        group.finish();
        groups.push(name);
    }
    groups
}

/// The bench's conv: 3x3, stride 1, padding 1.
const CONV_GEOMETRY: Conv2dGeometry = Conv2dGeometry {
    stride: [1, 1],
    padding: [[1, 1], [1, 1]],
    dilation: [1, 1],
    groups: 1,
};

/// The Jacobians of the bench's conv (3x3, padding 1, `C -> C`) on the
/// autodiff device, from the conv's input and output values.
fn jacobians_step((x, y): &(Tensor<4>, Tensor<4>)) {
    let channels = x.dims()[1];
    let (x, y) = (x.clone().autodiff(), y.clone().autodiff());
    let jacobians = conv2d_moment_jacobians(x, y, [channels, channels, 3, 3], CONV_GEOMETRY);
    let _ = jacobians.mean_sq.into_data();
}

/// One weight-gradient convolution of the bench's conv (3x3, padding 1,
/// burn's own operation), input `x`, output gradient `grad` (any number of
/// channels), read back.
fn weight_gradient(x: &Tensor<4>, grad: Tensor<4>) {
    let [_, c_in, _, _] = x.dims();
    let c_out = grad.dims()[1];
    let weight = Tensor::<4>::zeros([c_out, c_in, 3, 3], &x.device());
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let gradient = conv2d_weight_backward(x.clone(), weight, grad, options);
    let _ = gradient.into_data();
}

common::comparison_main!(10, 4, bench_backend, print_breakdown);

/// The target ratio (window 8 against burn's layers), then its two parts,
/// then (opt-in) the window's parts.
fn print_breakdown(backend: &str, groups: &[String]) {
    let mut tables = vec![
        (
            "Conv2dCbn (k = 8) / Conv2d + BatchNorm, forward + backward",
            "Conv2d+BatchNorm",
            "Conv2dCbn",
        ),
        (
            "Conv2dCbn (k = 1) / Conv2d + BatchNorm, forward + backward",
            "Conv2d+BatchNorm",
            "Conv2dCbn-k1",
        ),
        (
            "Conv2dCbn (k = 8) / Conv2dCbn (k = 1), forward + backward",
            "Conv2dCbn-k1",
            "Conv2dCbn",
        ),
    ];
    if window_parts() {
        tables.extend([
            (
                "Compensation: Conv2dCbn / rho = 0, forward + backward",
                "Conv2dCbn-rho0",
                "Conv2dCbn",
            ),
            (
                "Backward through the history: Conv2dCbn / constant history, forward + backward",
                "Conv2dCbn-const-history",
                "Conv2dCbn",
            ),
            (
                "Jacobians, window statistics, pushes: rho = 0 / k = 1, forward + backward",
                "Conv2dCbn-k1",
                "Conv2dCbn-rho0",
            ),
            (
                "State guard: Conv2dCbn / without the guard, forward + backward",
                "Conv2dCbn-no-guard",
                "Conv2dCbn",
            ),
            (
                "Q stacked onto the conv's weight gradient: 2C channels / C channels",
                "Weight-gradient-C",
                "Weight-gradient-2C-stacked",
            ),
        ]);
    }
    for (title, baseline, candidate) in tables {
        let title = format!("{title}, {backend}");
        print_ratios(&title, groups, baseline, candidate);
    }
}

/// Whether to measure the window's parts (`BNORM_BENCH_WINDOW_PARTS=1`).
fn window_parts() -> bool {
    std::env::var("BNORM_BENCH_WINDOW_PARTS").is_ok_and(|v| v == "1")
}
