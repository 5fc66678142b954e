//! The training protocol: SGD with momentum 0.9, weight decay 5e-4,
//! lr = max(0.1 * batch / 32, 0.01) with cosine decay to 0, evaluation in
//! inference mode (running statistics).

use std::collections::VecDeque;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::Device;
use burn::tensor::{Int, Tensor, TensorData};

use super::model::{Norm, SmallCnn};
use super::{LabeledImages, SplitMix64};

/// How training batches are drawn each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sampling {
    /// Shuffle all samples, cut into batches.
    Iid,
    /// The BRN paper's non-i.i.d. setting: each class's shuffled samples are
    /// cut into same-class pairs, pairs shuffled and grouped `batch / 2` to
    /// a batch.
    Paired,
}

impl Sampling {
    /// Its `--sampling` name.
    pub fn name(self) -> String {
        super::flag_name(self)
    }
}

pub struct RunConfig {
    pub norm: Norm,
    pub batch_size: usize,
    pub epochs: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// The replay diagnostic (burn's BatchNorm only), or none.
    pub replay: Option<Replay>,
}

/// A diagnostic of what CBN's window lacks (`--replay`, burn's BatchNorm
/// rows only): each step also forwards the samples of the previous
/// `batches` steps, the ones a CBN window of `batches + 1` summarizes, and
/// counts only the current batch's loss. BatchNorm's statistics then cover
/// the window's samples at the current weights, with no Taylor step; how
/// far the replayed samples' gradient reaches is the variable.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// Earlier batches forwarded with each step's batch.
    pub batches: usize,
    /// Which parameters the replayed samples' gradient reaches.
    pub gradient: ReplayGradient,
}

/// Which parameters the replayed samples pass gradient to (through the
/// normalizations' statistics: their own loss is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayGradient {
    /// Every parameter, as in a batch that holds them.
    All,
    /// Each block's own conv weight only: CBN's gradient through its
    /// compensated history.
    Layer,
    /// Each block's own conv weight and the previous block's
    /// normalization scale and shift.
    Affine,
}

/// The order of training indices for one epoch, already cut into batches.
pub fn epoch_batches(
    data: &LabeledImages,
    batch: usize,
    sampling: Sampling,
    rng: &mut SplitMix64,
) -> Vec<Vec<usize>> {
    match sampling {
        Sampling::Iid => {
            let mut order: Vec<usize> = (0..data.len()).collect();
            rng.shuffle(&mut order);
            order
                .chunks(batch)
                .filter(|c| c.len() == batch)
                .map(|c| c.to_vec())
                .collect()
        }
        Sampling::Paired => {
            assert!(
                batch >= 2 && batch.is_multiple_of(2),
                "paired batches need an even batch size, got {batch}"
            );
            let mut pairs = Vec::new();
            for class in 0..10u8 {
                let mut idx: Vec<usize> = (0..data.len())
                    .filter(|&i| data.labels[i] == class)
                    .collect();
                rng.shuffle(&mut idx);
                pairs.extend(idx.chunks(2).filter(|c| c.len() == 2).map(|c| [c[0], c[1]]));
            }
            rng.shuffle(&mut pairs);
            pairs
                .chunks(batch / 2)
                .filter(|c| c.len() == batch / 2)
                .map(|c| c.iter().flatten().copied().collect())
                .collect()
        }
    }
}

pub fn steps_per_epoch(data: &LabeledImages, batch: usize, sampling: Sampling) -> usize {
    match sampling {
        Sampling::Iid => data.len() / batch,
        Sampling::Paired => epoch_batches(data, batch, sampling, &mut SplitMix64(0)).len(),
    }
}

pub fn images(data: &LabeledImages, idx: &[usize], device: &Device) -> Tensor<4> {
    let values: Vec<f32> = idx
        .iter()
        .flat_map(|&i| data.images[i].iter().copied())
        .collect();
    Tensor::from_data(
        TensorData::new(values, [idx.len(), 1, data.rows, data.cols]),
        device,
    )
}

pub fn labels(data: &LabeledImages, idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = idx.iter().map(|&i| data.labels[i] as i64).collect();
    Tensor::from_data(TensorData::new(values, [idx.len()]), device)
}

/// Trains one model and returns its test accuracy in percent. `on_step`
/// is called after every step with (step, total, loss).
pub fn train_and_evaluate(
    cfg: &RunConfig,
    train: &LabeledImages,
    test: &LabeledImages,
    device: &Device,
    mut on_step: impl FnMut(usize, usize, f32),
) -> f64 {
    let per_epoch = steps_per_epoch(train, cfg.batch_size, cfg.sampling);
    let total = per_epoch * cfg.epochs;
    let mut model = seeded_model(cfg, total, device);
    let mut optim = SgdConfig::new()
        // PyTorch's SGD momentum: burn's default dampening is 0.1.
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init();
    let base_lr = (0.1 * cfg.batch_size as f64 / 32.0).max(0.01);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = SplitMix64(cfg.seed ^ 0x5EED);
    // The batches of the last steps, newest first (`cfg.replay`).
    let mut replayed: VecDeque<Vec<usize>> = VecDeque::new();
    let mut step = 0;
    for _ in 0..cfg.epochs {
        for batch in epoch_batches(train, cfg.batch_size, cfg.sampling, &mut rng) {
            let lr =
                base_lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            let logits = match cfg.replay {
                Some(replay) => {
                    let rows: Vec<usize> = batch
                        .iter()
                        .chain(replayed.iter().flatten())
                        .copied()
                        .collect();
                    replayed.push_front(batch.clone());
                    replayed.truncate(replay.batches);
                    model
                        .forward_replaying(
                            images(train, &rows, device),
                            batch.len(),
                            replay.gradient,
                        )
                        .slice(0..batch.len())
                }
                None => model.forward(images(train, &batch, device)),
            };
            let loss = loss_fn.forward(logits, labels(train, &batch, device));
            let loss_value = if step % 50 == 0 {
                loss.clone().into_scalar::<f32>()
            } else {
                f32::NAN
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            step += 1;
            on_step(step, total, loss_value);
        }
    }
    evaluate(&model.valid(), test, &device.clone().inner())
}

/// The model for `cfg`, its weights drawn from `cfg.seed`.
fn seeded_model(cfg: &RunConfig, total_steps: usize, device: &Device) -> SmallCnn {
    seeded(cfg.seed, device, || {
        SmallCnn::new(cfg.norm, total_steps, device)
    })
}

/// The module `make` builds, its parameters drawn from `seed`.
///
/// burn's seed is global to the backend and parameters are drawn lazily at
/// first use, so runs training in parallel would interleave their draws:
/// the draws happen here, under a lock, by materializing the record.
pub fn seeded<M: Module>(seed: u64, device: &Device, make: impl FnOnce() -> M) -> M {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let model = make();
    let record = model.clone().into_record();
    model.load_record(record)
}

/// Accuracy in percent of `model` in inference mode.
pub fn evaluate(model: &SmallCnn, test: &LabeledImages, device: &Device) -> f64 {
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(128) {
        let pred = model
            .forward(images(test, chunk, device))
            .argmax(1)
            .reshape([chunk.len()]);
        let truth = labels(test, chunk, device);
        correct += pred.equal(truth).int().sum().into_scalar::<i64>() as usize;
    }
    100.0 * correct as f64 / test.len() as f64
}
