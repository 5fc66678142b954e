//! Shared bench support: the shapes of the design card and a summary that
//! prints each layer's time as a ratio of the baseline's, read from
//! criterion's own estimates of this run.
#![allow(dead_code)]

use std::path::PathBuf;

/// `[N, C, H, W]` shapes every comparison runs on.
pub const SHAPES: [[usize; 4]; 3] = [[2, 64, 56, 56], [1, 32, 128, 128], [8, 128, 28, 28]];

pub fn shape_name(s: [usize; 4]) -> String {
    format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3])
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

/// Whether to run `backend` ("ndarray", "cuda"): `BNORM_BENCH_BACKENDS` is a
/// comma-separated list (default: every compiled backend).
pub fn wants(backend: &str) -> bool {
    std::env::var("BNORM_BENCH_BACKENDS")
        .map(|list| list.split(',').any(|b| b.trim() == backend))
        .unwrap_or(true)
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
