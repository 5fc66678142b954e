//! The small-batch experiment: BatchNorm degrades as the batch shrinks and
//! when batches are not drawn i.i.d.; Batch Renormalization and
//! Cross-Iteration BN hold up. Trains the digits CNN (three 3x3 conv
//! blocks, 16/32/64 channels) with each normalization, batch size and
//! sampling, evaluates in inference mode, and writes a table, a CSV and an
//! SVG plot.
//!
//! ```sh
//! cargo run --release --example small_batch              # the full run
//! cargo run --release --example small_batch -- --quick   # under a minute
//! cargo run --release --example small_batch -- --help
//! ```

mod digits;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use digits::model::{Norm, CBN_BURN_IN, CBN_WINDOW};
use digits::report::{csv, markdown_table, svg_plot, RunResult};
use digits::train::{steps_per_epoch, train_and_evaluate, RunConfig, Sampling};
use digits::{training_device, Digits, DEVICE_NAMES};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

const HELP: &str = "\
small_batch: BatchNorm vs Batch Renormalization vs Cross-Iteration BN vs GroupNorm at small batch sizes

USAGE: cargo run --release --example small_batch -- [FLAGS]

Data: the UCI optical digits shipped in data/ (1797 8x8 images; 1437 train / 360 test after a
fixed-seed permutation), or MNIST-format IDX files:
  --idx-images FILE --idx-labels FILE            training images/labels (IDX, unsigned bytes)
  --idx-test-images FILE --idx-test-labels FILE  test set (without it, the last 20% of the training
                                                 files, permuted with seed 0, are held out)

Protocol (every run): SGD, momentum 0.9, weight decay 5e-4, lr = max(0.1 * batch / 32, 0.01) with
cosine decay to 0; evaluation in inference mode (running statistics).

FLAGS:
  --epochs N            epochs per run, the same for every batch size        [default: 6]
  --seeds N             seeds per configuration; accuracies are averaged       [default: 2]
  --batch-sizes LIST    comma-separated batch sizes                           [default: 1,2,4,32]
  --norms LIST          of bn (burn BatchNorm), brn (BatchRenorm), cbn (Conv2dCbn),
                        cbn-ref (Conv2dCbn with the reference's choices), gn (GroupNorm, 4 groups)
                                                                              [default: bn,brn,cbn,gn]
  --sampling LIST       iid (shuffled) and/or paired (the BRN paper's non-i.i.d. batches: same-class
                        pairs, batch/2 pairs per batch; batch 1 has no paired variant)
                                                                              [default: iid,paired]
  --out DIR             where results.md, results.csv and accuracy.svg go     [default: target/small_batch]
  --jobs N              runs trained in parallel                              [default: CPU cores]
  --device NAME         flex or ndarray (CPU), wgpu (with --features wgpu)     [default: flex]
  --quick               2 epochs, 1 seed, batch sizes 1,2,32: under a minute on 2 cores
  --help                this text
";

struct Options {
    epochs: usize,
    seeds: usize,
    batch_sizes: Vec<usize>,
    norms: Vec<Norm>,
    samplings: Vec<Sampling>,
    out: PathBuf,
    jobs: usize,
    idx: Option<(PathBuf, PathBuf)>,
    idx_test: Option<(PathBuf, PathBuf)>,
    device: String,
}

fn fail(message: &str) -> ! {
    eprintln!("small_batch: {message}\n\n{HELP}");
    std::process::exit(2);
}

fn list<T>(value: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Vec<T> {
    value
        .split(',')
        .map(|v| parse(v.trim()).unwrap_or_else(|| fail(&format!("unknown {what} {v:?}"))))
        .collect()
}

fn parse_norm(name: &str) -> Option<Norm> {
    Some(match name {
        "bn" => Norm::BatchNorm,
        "brn" => Norm::BatchRenorm,
        "cbn" => Norm::CrossIter,
        "cbn-ref" => Norm::CrossIterReference,
        "gn" => Norm::GroupNorm,
        _ => return None,
    })
}

fn parse_args() -> Options {
    let mut opts = Options {
        epochs: 6,
        seeds: 2,
        batch_sizes: vec![1, 2, 4, 32],
        norms: vec![
            Norm::BatchNorm,
            Norm::BatchRenorm,
            Norm::CrossIter,
            Norm::GroupNorm,
        ],
        samplings: vec![Sampling::Iid, Sampling::Paired],
        out: PathBuf::from("target/small_batch"),
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        idx: None,
        idx_test: None,
        device: "flex".to_string(),
    };
    let (mut images, mut labels, mut test_images, mut test_labels) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| fail(&format!("not a positive number: {v:?}")))
        };
        match flag.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--epochs" => opts.epochs = number(value()),
            "--seeds" => opts.seeds = number(value()),
            "--jobs" => opts.jobs = number(value()),
            "--batch-sizes" => {
                opts.batch_sizes = list(
                    &value(),
                    |v| v.parse().ok().filter(|&n: &usize| n > 0),
                    "batch size",
                )
            }
            "--norms" => opts.norms = list(&value(), parse_norm, "normalization"),
            "--sampling" => {
                opts.samplings = list(
                    &value(),
                    |v| match v {
                        "iid" => Some(Sampling::Iid),
                        "paired" => Some(Sampling::Paired),
                        _ => None,
                    },
                    "sampling",
                )
            }
            "--out" => opts.out = PathBuf::from(value()),
            "--device" => opts.device = value(),
            "--quick" => {
                opts.epochs = 2;
                opts.seeds = 1;
                opts.batch_sizes = vec![1, 2, 32];
            }
            "--idx-images" => images = Some(PathBuf::from(value())),
            "--idx-labels" => labels = Some(PathBuf::from(value())),
            "--idx-test-images" => test_images = Some(PathBuf::from(value())),
            "--idx-test-labels" => test_labels = Some(PathBuf::from(value())),
            other => fail(&format!("unknown flag {other:?}")),
        }
    }
    opts.idx = match (images, labels) {
        (Some(i), Some(l)) => Some((i, l)),
        (None, None) => None,
        _ => fail("--idx-images and --idx-labels go together"),
    };
    opts.idx_test = match (test_images, test_labels) {
        (Some(i), Some(l)) if opts.idx.is_some() => Some((i, l)),
        (None, None) => None,
        _ => fail(
            "--idx-test-images and --idx-test-labels go together, with --idx-images/--idx-labels",
        ),
    };
    opts
}

fn load(opts: &Options) -> (Digits, Digits, String) {
    let or_exit = |r: Result<Digits, String>| r.unwrap_or_else(|e| fail(&e));
    match (&opts.idx, &opts.idx_test) {
        (Some((i, l)), Some((ti, tl))) => (
            or_exit(Digits::load_idx(i, l)),
            or_exit(Digits::load_idx(ti, tl)),
            format!("IDX {} / {}", i.display(), ti.display()),
        ),
        (Some((i, l)), None) => {
            let data = or_exit(Digits::load_idx(i, l));
            let test_len = data.len() / 5;
            let (train, test) = data.split_with_test_len(0, test_len);
            (
                train,
                test,
                format!("IDX {} (last 20% held out)", i.display()),
            )
        }
        _ => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/optdigits-1797.csv.gz");
            let (train, test) = or_exit(Digits::load_csv_gz(&path)).split(0);
            (train, test, "UCI optical digits (CC BY 4.0)".to_string())
        }
    }
}

fn main() {
    let opts = parse_args();
    let device = training_device(&opts.device).unwrap_or_else(|| {
        fail(&format!(
            "unknown device {:?} (one of: {DEVICE_NAMES})",
            opts.device
        ))
    });
    let (train, test, source) = load(&opts);
    let mut jobs = VecDeque::new();
    for &norm in &opts.norms {
        for &batch_size in &opts.batch_sizes {
            for &sampling in &opts.samplings {
                if sampling == Sampling::Paired && (batch_size < 2 || batch_size % 2 == 1) {
                    continue;
                }
                for seed in 1..=opts.seeds as u64 {
                    jobs.push_back(RunConfig {
                        norm,
                        batch_size,
                        epochs: opts.epochs,
                        sampling,
                        seed,
                    });
                }
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
        opts.epochs,
        opts.jobs
    );
    println!(
        "BatchRenorm: the paper's rmax/dmax ramps compressed to each run (relaxation from 1/8 of the run, \
         rmax 3 at its end, dmax 5 at 5/8), momentum max(0.01, 20 / run steps). \
         CBN: window {CBN_WINDOW}, burn-in {CBN_BURN_IN} iterations."
    );

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
        for _ in 0..opts.jobs.min(total_jobs).max(1) {
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

    let table = markdown_table(&results, &opts.norms, &opts.batch_sizes, &opts.samplings);
    let title = format!(
        "Test accuracy, mean of {} seed(s), {} epoch(s)",
        opts.seeds, opts.epochs
    );
    std::fs::create_dir_all(&opts.out)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", opts.out.display())));
    let write = |name: &str, text: String| {
        let path = opts.out.join(name);
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
    let csv_path = write(
        "results.csv",
        csv(&results, &opts.norms, &opts.batch_sizes, &opts.samplings),
    );
    let svg = write(
        "accuracy.svg",
        svg_plot(
            &results,
            &opts.norms,
            &opts.batch_sizes,
            &opts.samplings,
            &title,
        ),
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
