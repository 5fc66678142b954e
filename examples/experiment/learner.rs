//! The small CNN trained through burn-train's `Learner`: its data loading,
//! its training and validation steps, a one-line-per-epoch log for
//! terminals without the dashboard, and [`fit`], which wires them into
//! `SupervisedTraining` on one device or several (`MultiDevice`), with
//! burn's checkpointer and resuming from its latest checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset, DatasetError};
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::SgdConfig;
use burn::tensor::{Device, Int, Tensor};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{AccuracyMetric, LossMetric, MetricDefinition};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep,
};

use super::model::{Norm, SmallCnn};
use super::train::{evaluate, images, labels, seeded};
use super::{LabeledImages, SplitMix64};

/// The indices `0..len` as a burn `Dataset`: the batcher reads the images
/// they name.
#[derive(Debug, Clone, Copy)]
pub struct Indices(pub usize);

impl Dataset<usize> for Indices {
    fn get(&self, index: usize) -> Result<usize, DatasetError> {
        Ok(index)
    }

    fn len(&self) -> usize {
        self.0
    }
}

/// A batch: `[N, 1, rows, cols]` images and their `[N]` labels.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    pub images: Tensor<4>,
    pub targets: Tensor<1, Int>,
}

/// The images at a batch's indices, as the small-batch experiment stacks
/// them (`train::images`, `train::labels`).
#[derive(Debug, Clone)]
pub struct ImageBatcher(pub Arc<LabeledImages>);

impl Batcher<usize, ImageBatch> for ImageBatcher {
    fn batch(&self, indices: Vec<usize>, device: &Device) -> ImageBatch {
        ImageBatch {
            images: images(&self.0, &indices, device),
            targets: labels(&self.0, &indices, device),
        }
    }
}

impl SmallCnn {
    fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for SmallCnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for SmallCnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// A training run through the `Learner`.
#[derive(Debug, Clone)]
pub struct LearnerRun {
    pub norm: Norm,
    /// One model replica per device (burn-train's `MultiDevice` when more
    /// than one; a device may be listed twice: two replicas on two threads).
    pub devices: Vec<Device>,
    /// Samples per device and step.
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    /// SGD's initial learning rate, decayed to 0 along a cosine.
    pub learning_rate: f64,
    /// CBN's burn-in in training steps.
    pub cbn_burn_in: usize,
    /// Where the Learner writes its checkpoints and metric logs.
    pub dir: PathBuf,
    /// Continue from the latest checkpoint in `dir`.
    pub resume: bool,
    /// burn-train's terminal dashboard, or a line per epoch.
    pub dashboard: bool,
}

/// What a run gives back.
pub struct LearnerOutcome {
    /// The trained model, in inference mode.
    pub model: SmallCnn,
    /// Accuracy in percent on the held-out images.
    pub test_accuracy: f64,
    /// Optimizer steps per epoch (each over every device).
    pub steps_per_epoch: usize,
    /// The epoch this run resumed after, if it did.
    pub resumed_after: Option<usize>,
    pub seconds: f64,
}

impl LearnerRun {
    /// Optimizer steps per epoch: burn-train gives each device an equal
    /// slice of the training set, cut into batches; [`fit`] keeps the
    /// images that fill whole batches on every device.
    pub fn steps_per_epoch(&self, train_len: usize) -> usize {
        train_len / self.devices.len().max(1) / self.batch_size.max(1)
    }

    /// The model for this run, its weights drawn from the seed.
    fn model(&self, total_steps: usize) -> SmallCnn {
        let device = self.devices[0].clone().autodiff();
        seeded(self.seed, &device, || {
            SmallCnn::with_burn_in(self.norm, total_steps, self.cbn_burn_in, &device)
        })
    }

    fn check(&self, train_len: usize) -> Result<(), String> {
        if self.devices.is_empty() {
            return Err("--devices must be at least 1, got 0".into());
        }
        if self.batch_size == 0 || self.epochs == 0 {
            return Err(format!(
                "--batch-size and --epochs must be at least 1, got {} and {}",
                self.batch_size, self.epochs
            ));
        }
        if self.steps_per_epoch(train_len) == 0 {
            return Err(format!(
                "{train_len} training images cannot fill a batch of {} on each of {} devices",
                self.batch_size,
                self.devices.len()
            ));
        }
        Ok(())
    }
}

/// The epochs of the model checkpoints in `dir`, as burn-train's default
/// checkpointer names them (`checkpoint/model-<epoch>.bpk`).
pub fn checkpoint_epochs(dir: &Path) -> Vec<usize> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir.join("checkpoint"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// The model checkpoint of `epoch` in `dir`.
pub fn model_checkpoint(dir: &Path, epoch: usize) -> PathBuf {
    dir.join("checkpoint").join(format!("model-{epoch}.bpk"))
}

/// The epoch to resume after: the latest checkpoint, checked against this
/// run's model (layer kind, channels) before the Learner loads it, so a
/// wrong checkpoint stops the run with a message and nothing loaded.
fn resume_point(run: &LearnerRun, total_steps: usize) -> Result<usize, String> {
    let Some(&epoch) = checkpoint_epochs(&run.dir).last() else {
        return Err(format!(
            "nothing to resume: no checkpoint in {} (run once without --resume)",
            run.dir.join("checkpoint").display()
        ));
    };
    if epoch >= run.epochs {
        return Err(format!(
            "the latest checkpoint is of epoch {epoch}, and this run has {} epochs: \
             nothing left to train (raise --epochs)",
            run.epochs
        ));
    }
    bnorm::core::load_checkpoint(run.model(total_steps), model_checkpoint(&run.dir, epoch))
        .map_err(|e| format!("cannot resume as {}: {e}", run.norm.name()))?;
    Ok(epoch)
}

/// Trains `run` on `train` through the `Learner` (validating on `test`
/// after each epoch) and measures the final model on `test`.
///
/// The training set is read in one permutation drawn from the run's seed,
/// the same every epoch: burn's loaders shuffle from an RNG that
/// checkpoints do not save, so a resumed run would see other batches than
/// the uninterrupted one. Not the stored order: the shipped Fashion-MNIST
/// files end on a few classes, and an epoch's last steps set the running
/// statistics the model is evaluated with (docs/experiment.md).
pub fn fit(
    run: &LearnerRun,
    train: LabeledImages,
    test: LabeledImages,
) -> Result<LearnerOutcome, String> {
    run.check(train.len())?;
    let steps_per_epoch = run.steps_per_epoch(train.len());
    // Full batches only, on every device: a last short batch would be a
    // step of fewer samples (for burn's BatchNorm, a batch of one).
    let mut used: Vec<usize> = (0..train.len()).collect();
    SplitMix64(run.seed).shuffle(&mut used);
    used.truncate(steps_per_epoch * run.devices.len() * run.batch_size);
    let train = train.subset(&used);
    let total_steps = steps_per_epoch * run.epochs;
    let resumed_after = match run.resume {
        true => Some(resume_point(run, total_steps)?),
        false => None,
    };
    let test = Arc::new(test);
    let train_len = train.len();
    let loader_train: Arc<dyn DataLoader<ImageBatch>> =
        DataLoaderBuilder::new(ImageBatcher(Arc::new(train)))
            .batch_size(run.batch_size)
            .build(Indices(train_len));
    let loader_valid = DataLoaderBuilder::new(ImageBatcher(test.clone()))
        .batch_size(128)
        .build(Indices(test.len()));

    let mut training = SupervisedTraining::new(&run.dir, loader_train, loader_valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .with_default_checkpointers()
        .num_epochs(run.epochs);
    if let Some(epoch) = resumed_after {
        training = training.checkpoint(epoch);
    }
    if !run.dashboard {
        training = training.renderer(Box::new(EpochLog::default()));
    }
    if run.devices.len() > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(run.devices.clone(), MultiDeviceOptim::OptimMainDevice).into(),
        );
    }
    let optimizer = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init();

    // Decays to 0 over the whole run, as the small-batch experiment's; the
    // Learner checkpoints the scheduler with the model and optimizer.
    let schedule = CosineAnnealingLrSchedulerConfig::new(run.learning_rate, total_steps)
        .init()
        .map_err(|e| format!("learning rate {}: {e}", run.learning_rate))?;

    let started = Instant::now();
    let result = training.launch(Learner::new(run.model(total_steps), optimizer, schedule));
    if let Some(error) = result.error {
        return Err(format!("training failed: {error}"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let device = run.devices[0].clone().inner();
    let test_accuracy = evaluate(&result.model, &test, &device);
    Ok(LearnerOutcome {
        model: result.model,
        test_accuracy,
        steps_per_epoch,
        resumed_after,
        seconds,
    })
}

/// burn-train's renderer reduced to a line per split: the epoch, and the
/// validation metrics when it ends (for logs and terminals without the
/// dashboard).
#[derive(Default)]
pub struct EpochLog {
    names: std::collections::HashMap<String, String>,
    valid: Vec<(String, String)>,
    epoch: usize,
    epochs: usize,
    started: Option<Instant>,
}

impl EpochLog {
    fn name_of(&self, state: &MetricState) -> (String, String) {
        let entry = match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => entry,
        };
        let id = format!("{:?}", entry.metric_id);
        let name = self.names.get(&id).cloned().unwrap_or(id);
        (name, entry.serialized_entry.formatted.clone())
    }
}

impl MetricsRendererTraining for EpochLog {
    fn update_train(&mut self, _state: MetricState) {}

    fn update_valid(&mut self, state: MetricState) {
        let (name, value) = self.name_of(&state);
        match self.valid.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.valid.push((name, value)),
        }
    }
}

impl TrainingProgressLogger for EpochLog {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch;
        if starting_epoch > 1 {
            println!("resuming at epoch {starting_epoch} of {total_epochs}");
        }
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        if split.to_lowercase().contains("train") {
            self.started = Some(Instant::now());
            println!(
                "epoch {}/{}: training on {total_items} images",
                self.epoch, self.epochs
            );
        }
        self.valid.clear();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn end_split(&mut self) {
        if !self.valid.is_empty() {
            let metrics: Vec<String> = self
                .valid
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            let seconds = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            println!(
                "epoch {}/{}: validation {} ({seconds:.1} s)",
                self.epoch,
                self.epochs,
                metrics.join(", ")
            );
        }
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochLog {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for EpochLog {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for EpochLog {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(
            format!("{:?}", definition.metric_id),
            definition.name.to_string(),
        );
    }
}
