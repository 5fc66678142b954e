//! Conv3dCbn (3x3x3, same channels in and out, padding 1, window 8)
//! forward + backward against burn's Conv3d + BatchNorm, side by side in
//! one run, ratios printed at the end, with the same layer at window 1 as
//! a breakdown: what CBN costs on volumes.
//!
//! ```sh
//! cargo bench --bench cbn3d_vs_conv3d_batchnorm                    # ndarray
//! ```
//!
//! `BNORM_BENCH_SHAPES` picks shapes by name (`1x16x32x32x32`; a list of
//! 2D shapes only, as the GPU runner passes, skips this bench's);
//! `BNORM_BENCH_BACKENDS` backends.

mod common;

use bnorm::{Conv3dCbnConfig, CrossIterBatchNormConfig};
use burn::nn::conv::Conv3dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig3d};
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor};
use common::{print_ratios, selected, settle, shape_name, train_step};
use criterion::{BenchmarkId, Criterion};

/// `[N, C, D, H, W]`: one and two small volumes (a patch of a CT or MRI
/// scan, as 3D networks train on), and a tiny one where the cost per
/// operation, not arithmetic, decides.
const VOLUMES: [[usize; 5]; 3] = [[1, 16, 32, 32, 32], [2, 32, 16, 16, 16], [1, 8, 8, 8, 8]];

fn bench_backend(c: &mut Criterion, backend: &str, device: &Device) -> Vec<String> {
    let mut groups = Vec::new();
    for shape in selected(&VOLUMES) {
        let channels = shape[1];
        let name = format!("cbn3d-{backend}-{}", shape_name(shape));
        let mut group = c.benchmark_group(&name);
        let x = Tensor::<5>::random(shape, Distribution::Normal(0.0, 1.0), device);
        let padding = PaddingConfig3d::Explicit(1, 1, 1);
        let conv = Conv3dConfig::new([channels, channels], [3, 3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(channels).init(device);
        let cbn_with = |window: usize| {
            Conv3dCbnConfig::new([channels, channels], [3, 3, 3])
                .with_padding(padding.clone())
                .with_bias(false)
                .with_norm(CrossIterBatchNormConfig::new(0).with_window(window))
                .init(device)
        };
        // Window 1 is plain BatchNorm statistics through the same layer
        // (no history, no Jacobians): `k1 / Conv3d+BatchNorm` is the
        // layer's own overhead, `Conv3dCbn / k1` the window's.
        let (cbn_k1, cbn) = (cbn_with(1), cbn_with(8));
        // Fill the window first: the steady state is what training sees.
        for _ in 0..8 {
            let _ = cbn.forward(x.clone()).sum().backward();
        }
        let steps: [(&str, &dyn Fn()); 3] = [
            ("Conv3d+BatchNorm", &|| {
                train_step(&x, |x| bn.forward(conv.forward(x)))
            }),
            ("Conv3dCbn-k1", &|| train_step(&x, |x| cbn_k1.forward(x))),
            ("Conv3dCbn", &|| train_step(&x, |x| cbn.forward(x))),
        ];
        for (label, step) in steps {
            settle(&format!("{name}/{label}"), step);
            group.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(step));
        }
        group.finish();
        groups.push(name);
    }
    groups
}

common::comparison_main!(10, 4, bench_backend, print_breakdown);

/// The window-8 ratio against burn's layers, then its two parts.
fn print_breakdown(backend: &str, groups: &[String]) {
    if groups.is_empty() {
        return;
    }
    for (title, baseline, candidate) in [
        (
            "Conv3dCbn (k = 8) / Conv3d + BatchNorm, forward + backward",
            "Conv3d+BatchNorm",
            "Conv3dCbn",
        ),
        (
            "Conv3dCbn (k = 1) / Conv3d + BatchNorm, forward + backward",
            "Conv3d+BatchNorm",
            "Conv3dCbn-k1",
        ),
        (
            "Conv3dCbn (k = 8) / Conv3dCbn (k = 1), forward + backward",
            "Conv3dCbn-k1",
            "Conv3dCbn",
        ),
    ] {
        print_ratios(&format!("{title}, {backend}"), groups, baseline, candidate);
    }
}
