//! GPU kernels launched per training step (forward + backward), per layer,
//! on burn-wgpu with burn's default fusion: a count, not a time.
//!
//! ```sh
//! cargo run --features wgpu --example kernel_count -- [NxCxHxW]   # default 1x8x8x8
//! ```
//!
//! At the sizes small-batch training runs, a GPU step is bound by kernel
//! launches more than by arithmetic, so the count is what decides a
//! layer's GPU cost next to burn's own; it needs no GPU to read (lavapipe,
//! a CPU Vulkan driver, launches the same kernels) and, unlike a time, is
//! the same on every run. burn-cuda shares burn-cubecl's kernels and
//! burn-fusion's decisions with burn-wgpu, so its counts should be close;
//! the matmul and convolution kernels autotune picks may differ.
//!
//! It sets cubecl's profiling logger to list every launch in a temporary
//! file (before the device starts), fills each layer's state with 12 steps
//! (autotune runs its candidates there), then counts the launches of 10
//! more, and breaks the count down by kernel for Conv2dCbn (window 8)
//! against Conv2d + BatchNorm.

// The benches' training step (forward, backward, input gradient read back).
#[path = "../benches/common/mod.rs"]
mod bench_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::backend::{Autodiff, Wgpu};
use burn::cubecl::config::{profiling::ProfilingLogLevel, CubeClRuntimeConfig, RuntimeConfig};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor};

type B = Autodiff<Wgpu>;

const WARM_UP_STEPS: usize = 12;
const COUNTED_STEPS: usize = 10;

fn main() {
    let shape: [usize; 4] = std::env::args()
        .nth(1)
        .map(|s| {
            let dims: Vec<usize> = s
                .split('x')
                .map(|d| d.parse().expect("shape: NxCxHxW"))
                .collect();
            dims.try_into().expect("shape: four sizes, NxCxHxW")
        })
        .unwrap_or([1, 8, 8, 8]);
    let log = std::env::temp_dir().join(format!("bnorm-kernels-{}.log", std::process::id()));
    let mut config = CubeClRuntimeConfig::default();
    config.profiling.logger.level = ProfilingLogLevel::Minimal;
    config.profiling.logger.file = Some(log.clone());
    config.profiling.logger.append = false;
    CubeClRuntimeConfig::set(config);

    let device = bnorm::wgpu::device_or_explain();
    let channels = shape[1];
    let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let conv = Conv2dConfig::new([channels, channels], [3, 3])
        .with_padding(padding.clone())
        .with_bias(false)
        .init::<B>(&device);
    let batch_norm = BatchNormConfig::new(channels).init::<B>(&device);
    let batch_renorm = BatchRenormConfig::new(channels).init::<B>(&device);
    let cbn_with = |norm: CrossIterBatchNormConfig| {
        Conv2dCbnConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .with_norm(norm)
            .init::<B>(&device)
    };
    let window = |k: usize| CrossIterBatchNormConfig::new(0).with_window(k);
    let cbn_k1 = cbn_with(window(1));
    let cbn = cbn_with(window(8));
    let cbn_rho0 = cbn_with(window(8).with_rho(0.0));
    let cbn_constant = cbn_with(window(8).with_history_gradient(false));

    let mut counter = LaunchLog::new(log);
    println!(
        "Kernels per training step (forward + backward), burn-wgpu with fusion, input {shape:?}"
    );
    println!("| layer | kernels |");
    println!("|---|---|");
    let mut breakdowns = Vec::new();
    let layers: [(&str, &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>); 7] = [
        ("BatchNorm", &|x| batch_norm.forward(x)),
        ("BatchRenorm", &|x| batch_renorm.forward(x)),
        ("Conv2d + BatchNorm", &|x| {
            batch_norm.forward(conv.forward(x))
        }),
        ("Conv2dCbn, window 1", &|x| cbn_k1.forward(x)),
        ("Conv2dCbn, window 8", &|x| cbn.forward(x)),
        ("Conv2dCbn, window 8, rho = 0", &|x| cbn_rho0.forward(x)),
        ("Conv2dCbn, window 8, constant history", &|x| {
            cbn_constant.forward(x)
        }),
    ];
    for (label, forward) in layers {
        for _ in 0..WARM_UP_STEPS {
            bench_common::train_step(&x, forward);
        }
        counter.mark();
        for _ in 0..COUNTED_STEPS {
            bench_common::train_step(&x, forward);
        }
        let launches = counter.since_mark();
        println!(
            "| {label} | {} |",
            launches.len() as f64 / COUNTED_STEPS as f64
        );
        if label == "Conv2d + BatchNorm" || label == "Conv2dCbn, window 8" {
            breakdowns.push((label, by_kernel(&launches)));
        }
    }
    println!("\nBy kernel, per step:");
    let kernels: std::collections::BTreeSet<&String> =
        breakdowns.iter().flat_map(|(_, b)| b.keys()).collect();
    println!("| kernel | {} | {} |", breakdowns[0].0, breakdowns[1].0);
    println!("|---|---|---|");
    for kernel in kernels {
        let per_step = |b: &BTreeMap<String, usize>| {
            *b.get(kernel).unwrap_or(&0) as f64 / COUNTED_STEPS as f64
        };
        println!(
            "| {kernel} | {} | {} |",
            per_step(&breakdowns[0].1),
            per_step(&breakdowns[1].1)
        );
    }
    std::fs::remove_file(counter.path).ok();
}

/// Launch counts per kernel: the name up to its first type argument (the
/// operation for the unfused binary kernels).
fn by_kernel(launches: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for launch in launches {
        let parts: Vec<&str> = launch.split(" | ").collect();
        let name = match parts[0] {
            "KernelBinop" | "KernelScalarBinop" => format!("{} {}", parts[0], parts[1]),
            other => other.to_string(),
        };
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// cubecl's launch log: one `Executing <kernel>` line per launch, written
/// by a logger task after the launch, so reads wait until it stops growing.
struct LaunchLog {
    path: PathBuf,
    mark: usize,
}

impl LaunchLog {
    fn new(path: PathBuf) -> Self {
        Self { path, mark: 0 }
    }

    fn mark(&mut self) {
        self.mark = settled_lines(&self.path).len();
    }

    fn since_mark(&mut self) -> Vec<String> {
        let lines = settled_lines(&self.path);
        let launches = lines[self.mark..]
            .iter()
            .filter_map(|l| l.strip_prefix("Executing ").map(str::to_string))
            .collect();
        self.mark = lines.len();
        launches
    }
}

/// The file's lines once their count has not changed for 300 ms.
fn settled_lines(path: &Path) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut lines = read();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let again = read();
        if again.len() == lines.len() {
            return again;
        }
        lines = again;
    }
}
