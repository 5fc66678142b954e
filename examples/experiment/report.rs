//! The demo's outputs: a markdown table of mean test accuracy per
//! (normalization, batch size, sampling), the same numbers as CSV, and an
//! SVG plot of accuracy against batch size per normalization, one panel per
//! sampling.

use std::fmt::Write as _;

use plotters::prelude::*;

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

/// Every (batch size, sampling) pair, batch-size major, but paired batches
/// of an odd size (batch 1 has no paired variant).
pub fn columns(batch_sizes: &[usize], samplings: &[Sampling]) -> Vec<(usize, Sampling)> {
    let mut cols = Vec::new();
    for &b in batch_sizes {
        for &s in samplings {
            if s == Sampling::Paired && b % 2 == 1 {
                continue;
            }
            cols.push((b, s));
        }
    }
    cols
}

/// The distinct values of `key` over `columns`, in order of appearance.
fn distinct<T: PartialEq>(
    columns: &[(usize, Sampling)],
    key: impl Fn(&(usize, Sampling)) -> T,
) -> Vec<T> {
    let mut values = Vec::new();
    for column in columns {
        let value = key(column);
        if !values.contains(&value) {
            values.push(value);
        }
    }
    values
}

/// Markdown table: one row per normalization, one column per (batch, sampling).
pub fn markdown_table(results: &[RunResult], norms: &[Norm], cols: &[(usize, Sampling)]) -> String {
    let mut out = String::from("| normalization |");
    for (b, s) in cols {
        let _ = write!(out, " batch {b} {} |", s.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(cols.len()));
    out.push('\n');
    for &norm in norms {
        let _ = write!(out, "| {} |", norm.name());
        for &(b, s) in cols {
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
pub fn csv(results: &[RunResult], norms: &[Norm], cols: &[(usize, Sampling)]) -> String {
    let mut out = String::from(
        "normalization,batch_size,sampling,seeds,mean_accuracy,accuracies,mean_seconds\n",
    );
    for &norm in norms {
        for &(b, s) in cols {
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

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// SVG line plot (plotters): test accuracy against batch size (log2 axis)
/// per normalization, one panel per sampling.
pub fn svg_plot(
    results: &[RunResult],
    norms: &[Norm],
    cols: &[(usize, Sampling)],
    title: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let batch_sizes = distinct(cols, |&(b, _)| b);
    let samplings = distinct(cols, |&(_, s)| s);
    let lowest = results.iter().map(|r| r.accuracy).fold(100.0f64, f64::min);
    let y_min = ((lowest / 10.0).floor() * 10.0).clamp(0.0, 90.0);
    let log_b: Vec<f64> = batch_sizes.iter().map(|&b| (b as f64).log2()).collect();
    let x_lo = log_b.iter().copied().fold(f64::INFINITY, f64::min);
    let x_hi = log_b
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(x_lo + 1.0);
    let pad = 0.05 * (x_hi - x_lo);
    let mut svg = String::new();
    {
        let size = (460 * samplings.len().max(1) as u32, 380);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 18))?;
        for (panel, &sampling) in root
            .split_evenly((1, samplings.len().max(1)))
            .iter()
            .zip(&samplings)
        {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} batches", sampling.name()), ("sans-serif", 14))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(x_lo - pad..x_hi + pad, y_min..100.0)?;
            let batch_label = |lb: &f64| format!("{:.0}", lb.exp2());
            chart
                .configure_mesh()
                .x_labels(((x_hi - x_lo).round() as usize + 1).max(2))
                .x_label_formatter(&batch_label)
                .y_label_formatter(&|acc| format!("{acc:.0}%"))
                .x_desc("batch size")
                .y_desc("test accuracy")
                .draw()?;
            for (n, &norm) in norms.iter().enumerate() {
                let color = COLORS[n % COLORS.len()];
                let points: Vec<(f64, f64)> = batch_sizes
                    .iter()
                    .zip(&log_b)
                    .filter_map(|(&b, &lb)| {
                        mean_accuracy(results, norm, b, sampling).map(|(acc, _)| (lb, acc))
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(norm.name())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}
