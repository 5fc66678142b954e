//! The demo's outputs: a markdown table of mean test accuracy per
//! (normalization, batch size, sampling), the same numbers as CSV, and an
//! SVG plot of accuracy against batch size per normalization, one panel per
//! sampling.

use std::fmt::Write as _;

use super::model::Norm;
use super::train::Sampling;

/// One training run's outcome.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub norm: Norm,
    pub batch_size: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub accuracy: f64,
    pub seconds: f64,
}

/// Mean accuracy over seeds and the number of seeds, per configuration.
pub fn mean_accuracy(
    results: &[RunResult],
    norm: Norm,
    batch: usize,
    sampling: Sampling,
) -> Option<(f64, usize)> {
    let runs: Vec<f64> = runs_by_seed(results, norm, batch, sampling)
        .iter()
        .map(|r| r.accuracy)
        .collect();
    (!runs.is_empty()).then(|| (runs.iter().sum::<f64>() / runs.len() as f64, runs.len()))
}

/// The runs of one configuration in seed order (parallel runs finish in any
/// order; the report must not depend on it).
fn runs_by_seed(
    results: &[RunResult],
    norm: Norm,
    batch: usize,
    sampling: Sampling,
) -> Vec<&RunResult> {
    let mut runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.norm == norm && r.batch_size == batch && r.sampling == sampling)
        .collect();
    runs.sort_by_key(|r| r.seed);
    runs
}

fn columns(batch_sizes: &[usize], samplings: &[Sampling]) -> Vec<(usize, Sampling)> {
    let mut cols = Vec::new();
    for &b in batch_sizes {
        for &s in samplings {
            if s == Sampling::Paired && b < 2 {
                continue; // batch 1 has no paired variant
            }
            cols.push((b, s));
        }
    }
    cols
}

/// Markdown table: one row per normalization, one column per (batch, sampling).
pub fn markdown_table(
    results: &[RunResult],
    norms: &[Norm],
    batch_sizes: &[usize],
    samplings: &[Sampling],
) -> String {
    let cols = columns(batch_sizes, samplings);
    let mut out = String::from("| normalization |");
    for (b, s) in &cols {
        let _ = write!(out, " batch {b} {} |", s.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(cols.len()));
    out.push('\n');
    for &norm in norms {
        let _ = write!(out, "| {} |", norm.name());
        for &(b, s) in &cols {
            match mean_accuracy(results, norm, b, s) {
                Some((acc, _)) => {
                    let _ = write!(out, " {acc:.1}% |");
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// CSV with one line per configuration: mean and per-seed accuracies.
pub fn csv(
    results: &[RunResult],
    norms: &[Norm],
    batch_sizes: &[usize],
    samplings: &[Sampling],
) -> String {
    let mut out = String::from(
        "normalization,batch_size,sampling,seeds,mean_accuracy,accuracies,mean_seconds\n",
    );
    for &norm in norms {
        for (b, s) in columns(batch_sizes, samplings) {
            let runs = runs_by_seed(results, norm, b, s);
            if runs.is_empty() {
                continue;
            }
            let mean = runs.iter().map(|r| r.accuracy).sum::<f64>() / runs.len() as f64;
            let secs = runs.iter().map(|r| r.seconds).sum::<f64>() / runs.len() as f64;
            let each: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.accuracy)).collect();
            let _ = writeln!(
                out,
                "{},{b},{},{},{mean:.2},{},{secs:.1}",
                norm.name(),
                s.name(),
                runs.len(),
                each.join(" ")
            );
        }
    }
    out
}

const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// SVG line plot: test accuracy against batch size (log2 axis) per
/// normalization, one panel per sampling.
pub fn svg_plot(
    results: &[RunResult],
    norms: &[Norm],
    batch_sizes: &[usize],
    samplings: &[Sampling],
    title: &str,
) -> String {
    let (panel_w, panel_h, margin) = (420.0, 300.0, 55.0);
    let width = margin + samplings.len() as f64 * (panel_w + margin) + 150.0;
    let height = panel_h + 2.0 * margin + 20.0;
    let lowest = results.iter().map(|r| r.accuracy).fold(100.0f64, f64::min);
    let y_min = ((lowest / 10.0).floor() * 10.0).clamp(0.0, 90.0);
    let log_b: Vec<f64> = batch_sizes.iter().map(|&b| (b as f64).log2()).collect();
    let (x_lo, x_hi) = (
        log_b.iter().cloned().fold(f64::INFINITY, f64::min),
        log_b
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1.0),
    );
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{title}</text>"#,
        width / 2.0
    );
    for (p, &sampling) in samplings.iter().enumerate() {
        let x0 = margin + p as f64 * (panel_w + margin);
        let y0 = margin;
        let sx = |lb: f64| {
            x0 + if x_hi > x_lo {
                (lb - x_lo) / (x_hi - x_lo) * panel_w
            } else {
                panel_w / 2.0
            }
        };
        let sy = |acc: f64| y0 + panel_h - (acc - y_min) / (100.0 - y_min) * panel_h;
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{y0}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{} batches</text>"#,
            x0 + panel_w / 2.0,
            y0 - 8.0,
            sampling.name()
        );
        let mut tick = y_min;
        while tick <= 100.0 + 1e-9 {
            let y = sy(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
                x0 + panel_w
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{tick:.0}%</text>"#,
                x0 - 5.0,
                y + 4.0
            );
            tick += 10.0;
        }
        for (&b, &lb) in batch_sizes.iter().zip(&log_b) {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{b}</text>"#,
                sx(lb),
                y0 + panel_h + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">batch size</text>"#,
            x0 + panel_w / 2.0,
            y0 + panel_h + 34.0
        );
        for (n, &norm) in norms.iter().enumerate() {
            let color = COLORS[n % COLORS.len()];
            let points: Vec<(f64, f64)> = batch_sizes
                .iter()
                .zip(&log_b)
                .filter_map(|(&b, &lb)| {
                    mean_accuracy(results, norm, b, sampling).map(|(acc, _)| (sx(lb), sy(acc)))
                })
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                );
            }
        }
    }
    let lx = margin + samplings.len() as f64 * (panel_w + margin);
    for (n, &norm) in norms.iter().enumerate() {
        let y = margin + 10.0 + 20.0 * n as f64;
        let color = COLORS[n % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            y + 4.0,
            norm.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}
