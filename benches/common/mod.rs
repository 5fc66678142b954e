//! Shared bench support: the shapes of the design card and a summary that
//! prints each layer's time as a ratio of the baseline's, read from
//! criterion's own estimates of this run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::tensor::Tensor;

/// `[N, C, H, W]` shapes every comparison runs on: the design card's three,
/// then a tiny one where every backend is bound by the cost per operation
/// rather than by arithmetic. On a GPU the card's shapes are launch-bound
/// (1–10 ms steps for a few MB), so the tiny shape on ndarray is a CPU
/// proxy for how many operations a layer adds there.
pub const SHAPES: [[usize; 4]; 4] = [
    [2, 64, 56, 56],
    [1, 32, 128, 128],
    [8, 128, 28, 28],
    [1, 8, 8, 8],
];

/// `NxCxHxW` (or `NxCxDxHxW`): a shape's name in groups and filters.
pub fn shape_name<const D: usize>(s: [usize; D]) -> String {
    s.map(|d| d.to_string()).join("x")
}

/// The shape a name `NxCxHxW` gives (the inverse of [`shape_name`]).
///
/// # Panics
///
/// If `name` is not four numbers joined by `x`, naming what came.
pub fn parse_shape(name: &str) -> [usize; 4] {
    let dims: Result<Vec<usize>, _> = name.split('x').map(str::parse).collect();
    dims.ok()
        .and_then(|dims| dims.try_into().ok())
        .unwrap_or_else(|| panic!("a shape NxCxHxW of four numbers, got `{name}`"))
}

/// [`SHAPES`], or those named in `BNORM_BENCH_SHAPES` (comma-separated,
/// e.g. `1x32x128x128,1x8x8x8`): on a GPU machine whose time is short, the
/// shapes not measured are not compiled, tuned and settled either (a
/// criterion filter would only skip their measurement).
pub fn shapes() -> Vec<[usize; 4]> {
    selected(&SHAPES)
}

/// The shapes of `all` that `BNORM_BENCH_SHAPES` names (all without it).
pub fn selected<const D: usize>(all: &[[usize; D]]) -> Vec<[usize; D]> {
    match std::env::var("BNORM_BENCH_SHAPES") {
        Ok(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            all.iter()
                .copied()
                .filter(|s| names.contains(&shape_name(*s).as_str()))
                .collect()
        }
        Err(_) => all.to_vec(),
    }
}

/// Where criterion writes its estimates: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `target/criterion` under the working
/// directory (`cargo bench` runs in the package directory; a packed bench
/// binary wherever it is started). Read at run time, never compiled in.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// A criterion configured for these comparisons, writing to [`criterion_dir`].
pub fn criterion(sample_size: usize, measurement_secs: u64) -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(sample_size)
        .measurement_time(std::time::Duration::from_secs(measurement_secs))
        .warm_up_time(std::time::Duration::from_secs(1))
        .output_directory(&criterion_dir())
        .configure_from_args()
}

/// One training step as the benches time it: `forward` on `x`, backward,
/// and a read of the input gradient's sum, which waits for the device.
pub fn train_step<const D: usize>(x: &Tensor<D>, forward: impl FnOnce(Tensor<D>) -> Tensor<D>) {
    let x = x.clone().require_grad();
    let grads = forward(x.clone()).sum().backward();
    let _ = x.grad(&grads).unwrap().sum().into_data();
}

/// Runs `step` until its time has settled, before criterion sees it, and
/// prints the cold-start cost. On CUDA the first steps of each new shape
/// compile kernels (NVRTC) and autotune them (burn's default `autotune`),
/// taking up to seconds each; criterion's warm-up ends after its first
/// iteration when that one is slow, and the tuning then lands in its
/// samples (an H100 run gave BatchNorm samples from 1.8 ms to 99 ms).
/// Settled: 10 consecutive steps each within 2x of the fastest so far, or
/// 3 once 5 s have passed (CPU steps of seconds have nothing to tune);
/// capped at 2 minutes.
pub fn settle(label: &str, mut step: impl FnMut()) {
    let start = Instant::now();
    let (mut fastest, mut first, mut steps, mut settled_run) = (f64::INFINITY, 0.0, 0, 0);
    let settled = |run: usize, elapsed: Duration| run >= 10 || (run >= 3 && elapsed.as_secs() >= 5);
    while !settled(settled_run, start.elapsed()) && start.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        step();
        let seconds = t.elapsed().as_secs_f64();
        if steps == 0 {
            first = seconds;
        }
        steps += 1;
        fastest = fastest.min(seconds);
        settled_run = if seconds <= 2.0 * fastest {
            settled_run + 1
        } else {
            0
        };
    }
    println!(
        "{label}: first step {:.1} ms, settled after {steps} steps in {:.2} s (fastest {:.3} ms)",
        first * 1e3,
        start.elapsed().as_secs_f64(),
        fastest * 1e3
    );
}

/// The backends a comparison bench can run on: the CPU ones, and the GPU
/// ones built in (`--features wgpu`, `--features cuda`).
pub const BACKENDS: &[&str] = &[
    "ndarray",
    "flex",
    #[cfg(feature = "wgpu")]
    "wgpu",
    #[cfg(feature = "cuda")]
    "cuda",
];

/// Whether to run `backend`: `BNORM_BENCH_BACKENDS` is a comma-separated
/// list (default: ndarray and flex; a GPU backend only when named).
pub fn wants(backend: &str) -> bool {
    match std::env::var("BNORM_BENCH_BACKENDS") {
        Ok(list) => list.split(',').any(|b| b.trim() == backend),
        Err(_) => matches!(backend, "ndarray" | "flex"),
    }
}

/// The autodiff device a bench named `name` (one of [`BACKENDS`]) runs on;
/// a GPU's is checked first and named when missing. A step's time includes
/// reading its input gradient's sum back, which waits for the device.
pub fn bench_device(name: &str) -> burn::tensor::Device {
    let device = match name {
        #[allow(deprecated)]
        "ndarray" => burn::tensor::Device::ndarray(),
        "flex" => burn::tensor::Device::flex(),
        #[cfg(feature = "wgpu")]
        "wgpu" => bnorm::wgpu::device().unwrap_or_else(|e| panic!("{e}")),
        #[cfg(feature = "cuda")]
        "cuda" => bnorm::cuda::device(0).unwrap_or_else(|e| panic!("{e}")),
        other => panic!("unknown bench backend {other:?} (one of {BACKENDS:?})"),
    };
    device.autodiff()
}

/// Mean time in nanoseconds criterion estimated for `group/function`.
pub fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

/// Prints a markdown table: for each group, baseline time, candidate time
/// and candidate / baseline.
pub fn print_ratios(title: &str, groups: &[String], baseline: &str, candidate: &str) {
    println!("\n{title}\n");
    println!("| shape | {baseline} | {candidate} | ratio |");
    println!("|---|---|---|---|");
    for group in groups {
        match (mean_ns(group, baseline), mean_ns(group, candidate)) {
            (Some(b), Some(c)) => println!(
                "| {group} | {:.3} ms | {:.3} ms | {:.2}x |",
                b / 1e6,
                c / 1e6,
                c / b
            ),
            _ => println!("| {group} | (not run) | (not run) | |"),
        }
    }
}

/// A comparison bench's `main`: `$bench(&mut criterion, backend,
/// &device) -> Vec<String>` (its criterion groups) on each of [`BACKENDS`]
/// that [`wants`] allows, then `$summary(backend, &groups)` for each.
#[allow(unused_macros)] // step_memory shares this file and has its own main
macro_rules! comparison_main {
    ($samples:expr, $seconds:expr, $bench:ident, $summary:ident) => {
        fn main() {
            let mut c = common::criterion($samples, $seconds);
            let mut summaries = Vec::new();
            for &name in common::BACKENDS {
                if common::wants(name) {
                    let device = common::bench_device(name);
                    summaries.push((name, $bench(&mut c, name, &device)));
                }
            }
            c.final_summary();
            for (name, groups) in &summaries {
                $summary(name, groups);
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use comparison_main;
