//! The small-batch experiment: BatchNorm degrades as the batch shrinks and
//! when batches are not drawn i.i.d.; Batch Renormalization and
//! Cross-Iteration BN hold up. Trains a small CNN (three 3x3 conv blocks,
//! 16/32/64 channels) with each normalization, batch size and
//! sampling, evaluates in inference mode, and writes a table, a CSV and an
//! SVG plot. On the UCI optical digits (8x8) by default, on Fashion-MNIST
//! (28x28) with `--data fashion`, or on IDX files of the user's own.
//!
//! ```sh
//! cargo run --release --example small_batch                   # digits: a few minutes on 2 cores
//! cargo run --release --example small_batch -- --data fashion # 28x28 clothing images
//! cargo run --release --example small_batch -- --quick        # one epoch: under a minute
//! cargo run --release --example small_batch -- --help
//! ```

mod experiment;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use clap::builder::PossibleValuesParser;
use clap::Parser;
use experiment::model::{Norm, CBN_BURN_IN, CBN_WINDOW};
use experiment::report::{columns, csv, markdown_table, svg_plot, RunResult};
use experiment::train::{
    steps_per_epoch, train_and_evaluate, Replay, ReplayGradient, RunConfig, Sampling,
};
use experiment::{flag_name, training_device, DataSet, LabeledImages, DEVICE_NAMES};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// BatchNorm vs Batch Renormalization vs Cross-Iteration BN vs GroupNorm at
/// small batch sizes: trains a small CNN with each normalization, batch size
/// and sampling, evaluates in inference mode, and writes a table, a CSV and
/// an SVG plot.
#[derive(Parser, Debug)]
#[command(name = "small_batch", after_help = PROTOCOL)]
struct Args {
    /// The built-in data set.
    #[arg(long, value_enum, default_value_t = DataSet::Digits)]
    data: DataSet,
    /// Epochs per run, the same for every batch size [default: digits 6, fashion 2].
    #[arg(long, value_parser = positive)]
    epochs: Option<usize>,
    /// Seeds per configuration; accuracies are averaged [default: digits 2, fashion 1].
    #[arg(long, value_parser = positive)]
    seeds: Option<usize>,
    /// Comma-separated batch sizes, each trained with every --sampling
    /// [default: digits 1,2,4,32; fashion 1 iid, 2 paired, 32 iid].
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    batch_sizes: Option<Vec<usize>>,
    /// Comma-separated normalizations.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bn,brn,cbn,gn"
    )]
    norms: Vec<Norm>,
    /// Comma-separated samplings: iid (shuffled) and/or paired (the BRN
    /// paper's non-i.i.d. batches of same-class pairs; odd batch sizes have
    /// none) [default: iid,paired].
    #[arg(long, value_enum, value_delimiter = ',')]
    sampling: Option<Vec<Sampling>>,
    /// Where results.md, results.csv and accuracy.svg go [default: target/small_batch/<data>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Runs trained in parallel [default: the CPU cores].
    #[arg(long, value_parser = positive)]
    jobs: Option<usize>,
    /// flex or ndarray (CPU), wgpu or cuda (built with --features wgpu or
    /// --features cuda).
    #[arg(long, default_value = "flex", value_parser = PossibleValuesParser::new(DEVICE_NAMES))]
    device: String,
    /// Fewer runs: digits 2 epochs, 1 seed, batch sizes 1,2,32 (about 20 s
    /// on 2 cores); fashion 1 epoch.
    #[arg(long)]
    quick: bool,
    /// Training images in MNIST's IDX format (unsigned bytes, plain or
    /// gzipped), instead of --data; the digits protocol's defaults apply.
    #[arg(long, requires = "idx_labels", conflicts_with = "data")]
    idx_images: Option<PathBuf>,
    /// Training labels (IDX).
    #[arg(long, requires = "idx_images")]
    idx_labels: Option<PathBuf>,
    /// Test images (IDX); without them the last 20% of the training files,
    /// permuted with seed 0, are held out.
    #[arg(long, requires_all = ["idx_test_labels", "idx_images"])]
    idx_test_images: Option<PathBuf>,
    /// Test labels (IDX).
    #[arg(long, requires = "idx_test_images")]
    idx_test_labels: Option<PathBuf>,
    /// Diagnostic (docs/experiment.md), with `--norms bn` only: each
    /// step also forwards the previous K batches, the samples a CBN window
    /// of K + 1 holds, and counts only the current batch's loss.
    #[arg(long, hide = true, value_parser = positive)]
    replay: Option<usize>,
    /// Diagnostic: which parameters the replayed samples' gradient reaches.
    #[arg(
        long,
        hide = true,
        value_enum,
        default_value = "all",
        requires = "replay"
    )]
    replay_gradient: ReplayGradient,
}

const PROTOCOL: &str = "\
Protocol (every run): SGD, momentum 0.9, weight decay 5e-4, lr = max(0.1 * batch / 32, 0.01) with
cosine decay to 0; evaluation in inference mode (running statistics).
";

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive whole number, got {value:?}")),
    }
}

/// What one invocation runs, with each data set's defaults filled in.
struct Protocol {
    epochs: usize,
    seeds: usize,
    /// (batch size, sampling) of each column of the report.
    columns: Vec<(usize, Sampling)>,
}

impl Protocol {
    fn of(args: &Args) -> Self {
        use Sampling::{Iid, Paired};
        let fashion = args.data == DataSet::Fashion && args.idx_images.is_none();
        let (epochs, seeds, mut batch_sizes) = match (fashion, args.quick) {
            (false, false) => (6, 2, vec![1, 2, 4, 32]),
            (false, true) => (2, 1, vec![1, 2, 32]),
            (true, false) => (2, 1, vec![1, 2, 32]),
            (true, true) => (1, 1, vec![1, 2, 32]),
        };
        if let Some(sizes) = &args.batch_sizes {
            batch_sizes = sizes.clone();
        }
        // A Fashion run costs 50-100x a digits run: its default keeps the
        // three columns that decide (batch 1, paired batches of 2, and
        // BatchNorm's own ground at 32) to stay within 10 minutes on 2 cores.
        let columns = match (&args.sampling, fashion && args.batch_sizes.is_none()) {
            (None, true) => vec![(1, Iid), (2, Paired), (32, Iid)],
            (None, false) => columns(&batch_sizes, &[Iid, Paired]),
            (Some(samplings), _) => columns(&batch_sizes, samplings),
        };
        Protocol {
            epochs: args.epochs.unwrap_or(epochs),
            seeds: args.seeds.unwrap_or(seeds),
            columns,
        }
    }
}

/// What `gradient` reaches, as `--replay-gradient` documents it (the
/// variant's doc comment).
fn replay_gradient_help(gradient: ReplayGradient) -> String {
    use clap::ValueEnum;
    let value = gradient
        .to_possible_value()
        .expect("every variant is a value");
    value
        .get_help()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn fail(message: &str) -> ! {
    eprintln!("small_batch: {message}");
    std::process::exit(2);
}

fn load(args: &Args) -> (LabeledImages, LabeledImages, String) {
    let or_exit = |r: Result<LabeledImages, String>| r.unwrap_or_else(|e| fail(&e));
    match (
        &args.idx_images,
        &args.idx_labels,
        &args.idx_test_images,
        &args.idx_test_labels,
    ) {
        (Some(i), Some(l), Some(ti), Some(tl)) => (
            or_exit(LabeledImages::load_idx(i, l)),
            or_exit(LabeledImages::load_idx(ti, tl)),
            format!("IDX {} / {}", i.display(), ti.display()),
        ),
        (Some(i), Some(l), _, _) => {
            let data = or_exit(LabeledImages::load_idx(i, l));
            let test_len = data.len() / 5;
            let (train, test) = data.split_with_test_len(0, test_len);
            (
                train,
                test,
                format!("IDX {} (last 20% held out)", i.display()),
            )
        }
        _ => {
            let (train, test) = args.data.load().unwrap_or_else(|e| fail(&e));
            (train, test, args.data.source().to_string())
        }
    }
}

fn main() {
    let args = Args::parse();
    let device = training_device(&args.device).unwrap_or_else(|e| fail(&e));
    let protocol = Protocol::of(&args);
    let out = args.out.clone().unwrap_or_else(|| {
        let name = if args.idx_images.is_some() {
            "idx".to_string()
        } else {
            args.data.name()
        };
        PathBuf::from("target/small_batch").join(name)
    });
    let jobs_in_parallel = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let replay = args.replay.map(|batches| Replay {
        batches,
        gradient: args.replay_gradient,
    });
    if replay.is_some() && args.norms != [Norm::BatchNorm] {
        fail("--replay is a diagnostic for burn's BatchNorm: use it with --norms bn");
    }
    let (train, test, source) = load(&args);
    let mut jobs = VecDeque::new();
    for &norm in &args.norms {
        for &(batch_size, sampling) in &protocol.columns {
            for seed in 1..=protocol.seeds as u64 {
                jobs.push_back(RunConfig {
                    norm,
                    batch_size,
                    epochs: protocol.epochs,
                    sampling,
                    seed,
                    replay,
                });
            }
        }
    }
    println!(
        "{source}: {} train / {} test images of {}x{}; {} runs ({} epochs each), {} in parallel",
        train.len(),
        test.len(),
        train.rows,
        train.cols,
        jobs.len(),
        protocol.epochs,
        jobs_in_parallel
    );
    println!(
        "BatchRenorm: the paper's rmax/dmax ramps compressed to each run (relaxation from 1/8 of the run, \
         rmax 3 at its end, dmax 5 at 5/8), momentum max(0.01, 20 / run steps). \
         CBN: window {CBN_WINDOW}, burn-in {CBN_BURN_IN} steps."
    );
    if let Some(replay) = replay {
        println!(
            "Replay: each step also forwards the previous {} batches (their loss not counted). \
             Their gradient reaches: {}.",
            replay.batches,
            replay_gradient_help(replay.gradient)
        );
    }

    let started = Instant::now();
    let total_jobs = jobs.len();
    let queue = Mutex::new(jobs);
    let results = Mutex::new(Vec::new());
    let bars = MultiProgress::new();
    let overall = bars.add(ProgressBar::new(total_jobs as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} runs, {elapsed}")
            .unwrap()
            .progress_chars("=> "),
    );
    overall.set_prefix("all");
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} steps {msg}")
        .unwrap()
        .progress_chars("=> ");
    std::thread::scope(|scope| {
        for _ in 0..jobs_in_parallel.min(total_jobs).max(1) {
            scope.spawn(|| loop {
                let Some(cfg) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let steps = steps_per_epoch(&train, cfg.batch_size, cfg.sampling) * cfg.epochs;
                let bar = bars.insert_before(&overall, ProgressBar::new(steps as u64));
                bar.set_style(style.clone());
                bar.set_prefix(format!(
                    "{} b{} {} s{}",
                    cfg.norm.short(),
                    cfg.batch_size,
                    cfg.sampling.name(),
                    cfg.seed
                ));
                let start = Instant::now();
                let accuracy = train_and_evaluate(&cfg, &train, &test, &device, |step, _, loss| {
                    if step % 20 == 0 {
                        bar.set_position(step as u64);
                    }
                    if loss.is_finite() {
                        bar.set_message(format!("loss {loss:.3}"));
                    }
                });
                bar.finish_and_clear();
                let line = format!(
                    "{:<14} batch {:>2} {:<6} seed {}: {accuracy:5.1}%  ({:.0}s)",
                    cfg.norm.name(),
                    cfg.batch_size,
                    cfg.sampling.name(),
                    cfg.seed,
                    start.elapsed().as_secs_f64()
                );
                // indicatif hides its bars (and drops `println`) when the
                // output is not a terminal; the per-run lines must still show.
                if bars.is_hidden() {
                    println!("{line}");
                } else {
                    let _ = bars.println(line);
                }
                overall.inc(1);
                results.lock().unwrap().push(RunResult {
                    norm: cfg.norm,
                    batch_size: cfg.batch_size,
                    sampling: cfg.sampling,
                    seed: cfg.seed,
                    accuracy,
                    seconds: start.elapsed().as_secs_f64(),
                });
            });
        }
    });
    overall.finish_and_clear();
    let results = results.into_inner().unwrap();
    let duration = started.elapsed().as_secs_f64();

    let table = markdown_table(&results, &args.norms, &protocol.columns);
    let data_name = if args.idx_images.is_some() {
        "IDX files"
    } else {
        args.data.title()
    };
    let mut title = format!(
        "{data_name}: test accuracy, mean of {} seed(s), {} epoch(s)",
        protocol.seeds, protocol.epochs
    );
    if let Some(replay) = replay {
        let gradient = flag_name(replay.gradient);
        title += &format!(
            ", replaying {} batches (gradient {gradient})",
            replay.batches
        );
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        path
    };
    let md = write(
        "results.md",
        format!(
            "{title} ({source}; {} runs in {:.0} s)\n\n{table}",
            results.len(),
            duration
        ),
    );
    let csv_path = write("results.csv", csv(&results, &args.norms, &protocol.columns));
    let svg = write(
        "accuracy.svg",
        svg_plot(&results, &args.norms, &protocol.columns, &title)
            .unwrap_or_else(|e| fail(&format!("drawing the plot: {e}"))),
    );
    println!(
        "\n{title}, {} runs in {:.0} s\n\n{table}",
        results.len(),
        duration
    );
    println!(
        "table: {}\ncsv:   {}\nplot:  {}",
        md.display(),
        csv_path.display(),
        svg.display()
    );
}
