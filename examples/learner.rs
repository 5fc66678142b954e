//! The small CNN with BatchRenorm or CBN trained the way burn users train:
//! burn-train's `Learner` with its metrics, checkpointer and dashboard, on
//! one device or data-parallel over several (`--devices N`).
//!
//! ```text
//! cargo run --release --example learner -- --quick --no-tui
//! cargo run --release --example learner -- --norm brn --devices 2
//! cargo run --release --example learner -- --norm brn --devices 2 --resume
//! ```
//!
//! Checkpoints and metric logs go to `target/learner/<norm>/` (burn-train's
//! layout); `--resume` continues an interrupted run from the latest
//! checkpoint there: give it the run's own flags (the learning-rate
//! schedule and BRN's ramps are sized from `--epochs`). With
//! `--devices N` each step runs N replicas, each on its own batch of
//! `--batch-size` images, and burn-train sums their gradients: one
//! optimizer step, and one step on the layers' counters.

#[path = "experiment/mod.rs"]
mod experiment;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use experiment::learner::{fit, LearnerRun};
use experiment::model::{Norm, CBN_BURN_IN};
use experiment::{training_devices, DataSet, DEVICE_NAMES};

#[derive(Parser, Debug)]
#[command(about = "Train the small CNN with BatchRenorm or CBN through burn-train's Learner")]
struct Args {
    /// The normalization after each conv.
    #[arg(long, value_enum, default_value = "cbn")]
    norm: Norm,
    /// The data set.
    #[arg(long, value_enum, default_value = "digits")]
    data: DataSet,
    /// Replicas of the model, one per device, each on its own batch
    /// (burn-train's MultiDevice strategy): CUDA devices 0..N with
    /// `--device cuda`, N replicas on the one device otherwise.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// The backend every replica runs on.
    #[arg(long, default_value = "flex", value_parser = clap::builder::PossibleValuesParser::new(DEVICE_NAMES))]
    device: String,
    /// Images per device and step.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Epochs [default: 3, 1 with --quick].
    #[arg(long)]
    epochs: Option<usize>,
    /// SGD's initial learning rate, decayed to 0 along a cosine over the
    /// run (momentum 0.9, weight decay 5e-4).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Checkpoints and logs [default: target/learner/<norm>].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Continue from the latest checkpoint in the directory.
    #[arg(long)]
    resume: bool,
    /// One epoch (seconds on the digits, about half a minute on Fashion).
    #[arg(long)]
    quick: bool,
    /// A line per epoch instead of burn-train's terminal dashboard.
    #[arg(long)]
    no_tui: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let epochs = args.epochs.unwrap_or(if args.quick { 1 } else { 3 });
    let dir = args.dir.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/learner")
            .join(args.norm.short())
    });
    let run = LearnerRun {
        norm: args.norm,
        devices: training_devices(&args.device, args.devices)?,
        batch_size: args.batch_size,
        epochs,
        seed: args.seed,
        learning_rate: args.lr,
        cbn_burn_in: CBN_BURN_IN,
        dir: dir.clone(),
        resume: args.resume,
        dashboard: !args.no_tui,
    };
    let (train, test) = args.data.load()?;
    let outcome = fit(&run, train, test)?;

    let steps = outcome.steps_per_epoch * epochs;
    println!(
        "{} on {}, {} x {} device(s) x batch {}, {epochs} epoch(s), {steps} optimizer steps: \
         test accuracy {:.1}% in {:.1} s{}",
        args.norm.name(),
        args.data.title(),
        args.device,
        args.devices,
        args.batch_size,
        outcome.test_accuracy,
        outcome.seconds,
        match outcome.resumed_after {
            Some(epoch) => format!(" (resumed after epoch {epoch})"),
            None => String::new(),
        }
    );
    if let Some(counted) = outcome.model.norm_steps().first() {
        println!("the normalization layers counted {counted} training steps");
    }
    println!("checkpoints and metric logs: {}", dir.display());
    Ok(())
}
