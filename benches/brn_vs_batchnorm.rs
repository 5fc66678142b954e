//! BatchRenorm forward + backward against burn's BatchNorm on the same input,
//! side by side in one run, with the ratios printed at the end; and
//! BatchRenorm against itself without the state guard.
//!
//! ```sh
//! cargo bench --bench brn_vs_batchnorm                              # ndarray and flex
//! BNORM_BENCH_BACKENDS=flex cargo bench --bench brn_vs_batchnorm    # flex only
//! ```

mod common;

use bnorm::BatchRenormConfig;
use burn::nn::BatchNormConfig;
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor};
use common::{print_ratios, settle, shape_name, shapes, train_step};
use criterion::{BenchmarkId, Criterion};

fn bench_backend(c: &mut Criterion, backend: &str, device: &Device) -> Vec<String> {
    let mut groups = Vec::new();
    for shape in shapes() {
        let name = format!("brn-{backend}-{}", shape_name(shape));
        let mut group = c.benchmark_group(&name);
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.5, 2.0), device);
        let bn = BatchNormConfig::new(shape[1]).init(device);
        // Late in the schedule: r and d clip, the full BRN path runs.
        let brn = BatchRenormConfig::new(shape[1])
            .with_steps_compressed_to(1)
            .init(device);
        let unguarded = BatchRenormConfig::new(shape[1])
            .with_steps_compressed_to(1)
            .with_state_guard(false)
            .init(device);
        let bn_step = || train_step(&x, |x| bn.forward(x));
        let brn_step = || train_step(&x, |x| brn.forward(x));
        let unguarded_step = || train_step(&x, |x| unguarded.forward(x));
        settle(&format!("{name}/BatchNorm"), bn_step);
        settle(&format!("{name}/BatchRenorm"), brn_step);
        settle(&format!("{name}/BatchRenorm-no-guard"), unguarded_step);
        group.bench_function(BenchmarkId::from_parameter("BatchNorm"), |b| {
            b.iter(bn_step)
        });
        group.bench_function(BenchmarkId::from_parameter("BatchRenorm"), |b| {
            b.iter(brn_step)
        });
        group.bench_function(BenchmarkId::from_parameter("BatchRenorm-no-guard"), |b| {
            b.iter(unguarded_step)
        });
        group.finish();
        groups.push(name);
    }
    groups
}

common::comparison_main!(20, 3, bench_backend, print_summary);

fn print_summary(backend: &str, groups: &[String]) {
    print_ratios(
        &format!("BatchRenorm / BatchNorm, forward + backward, {backend}"),
        groups,
        "BatchNorm",
        "BatchRenorm",
    );
    print_ratios(
        &format!("State guard: BatchRenorm / without the guard, forward + backward, {backend}"),
        groups,
        "BatchRenorm-no-guard",
        "BatchRenorm",
    );
}
