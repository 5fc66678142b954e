//! Conv2dCbn (3x3, same channels in and out, window 8) forward + backward
//! against burn's Conv2d + BatchNorm, side by side in one run, ratios
//! printed at the end, with the same layer at window 1 as a breakdown.
//!
//! ```sh
//! cargo bench --bench cbn_vs_conv_batchnorm                    # ndarray
//! cargo bench --bench cbn_vs_conv_batchnorm --features cuda    # + CUDA
//! ```

mod common;

use bnorm::Conv2dCbnConfig;
use burn::backend::{Autodiff, NdArray};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use common::{print_ratios, settle, shape_name, train_step, SHAPES};
use criterion::{BenchmarkId, Criterion};

fn bench_backend<B: AutodiffBackend>(
    c: &mut Criterion,
    backend: &str,
    device: &B::Device,
) -> Vec<String> {
    let mut groups = Vec::new();
    for shape in SHAPES {
        let channels = shape[1];
        let name = format!("cbn-{backend}-{}", shape_name(shape));
        let mut group = c.benchmark_group(&name);
        let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
        let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .init::<B>(device);
        let bn = BatchNormConfig::new(channels).init::<B>(device);
        // The breakdown: window 1 is plain BatchNorm statistics through the
        // same layer (no history, no Jacobians), so `k1 / Conv2d+BatchNorm`
        // is the layer's own overhead and `Conv2dCbn / k1` the window's.
        let cbn_k1 = Conv2dCbnConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .with_window(1)
            .init::<B>(device);
        let cbn = Conv2dCbnConfig::new([channels, channels], [3, 3])
            .with_padding(padding)
            .with_bias(false)
            .with_window(8)
            .init::<B>(device);
        // Fill the window first: the steady state is what training sees.
        for _ in 0..8 {
            let _ = cbn.forward(x.clone()).sum().backward();
        }
        let conv_bn_step = || train_step(&x, |x| bn.forward(conv.forward(x)));
        let cbn_k1_step = || train_step(&x, |x| cbn_k1.forward(x));
        let cbn_step = || train_step(&x, |x| cbn.forward(x));
        settle(&format!("{name}/Conv2d+BatchNorm"), conv_bn_step);
        settle(&format!("{name}/Conv2dCbn-k1"), cbn_k1_step);
        settle(&format!("{name}/Conv2dCbn"), cbn_step);
        group.bench_function(BenchmarkId::from_parameter("Conv2d+BatchNorm"), |b| {
            b.iter(conv_bn_step)
        });
        group.bench_function(BenchmarkId::from_parameter("Conv2dCbn-k1"), |b| {
            b.iter(cbn_k1_step)
        });
        group.bench_function(BenchmarkId::from_parameter("Conv2dCbn"), |b| {
            b.iter(cbn_step)
        });
        group.finish();
        groups.push(name);
    }
    groups
}

fn main() {
    let mut c = common::criterion(10, 4);
    let groups = if common::wants("ndarray") {
        bench_backend::<Autodiff<NdArray>>(&mut c, "ndarray", &Default::default())
    } else {
        Vec::new()
    };
    #[cfg(feature = "cuda")]
    let cuda_groups = if common::wants("cuda") {
        bench_backend::<Autodiff<burn::backend::Cuda>>(
            &mut c,
            "cuda",
            &bnorm::cuda::device_or_explain(0),
        )
    } else {
        Vec::new()
    };
    c.final_summary();
    print_breakdown("ndarray", &groups);
    #[cfg(feature = "cuda")]
    print_breakdown("CUDA", &cuda_groups);
}

/// The target ratio (window 8 against burn's layers), then its two parts.
fn print_breakdown(backend: &str, groups: &[String]) {
    let tables = [
        (
            "Conv2dCbn (k = 8) / Conv2d + BatchNorm",
            "Conv2d+BatchNorm",
            "Conv2dCbn",
        ),
        (
            "Conv2dCbn (k = 1) / Conv2d + BatchNorm",
            "Conv2d+BatchNorm",
            "Conv2dCbn-k1",
        ),
        (
            "Conv2dCbn (k = 8) / Conv2dCbn (k = 1)",
            "Conv2dCbn-k1",
            "Conv2dCbn",
        ),
    ];
    for (title, baseline, candidate) in tables {
        let title = format!("{title}, forward + backward, {backend}");
        print_ratios(&title, groups, baseline, candidate);
    }
}
