//! The Learner example's training (`examples/experiment/learner.rs`, what
//! `examples/learner.rs` runs) on a handful of digits, through burn-train's
//! `Learner` on one device and on two (`MultiDevice`, two replicas of the
//! CPU device on two threads): resuming from the Learner's checkpoint
//! continues the uninterrupted run, the layers count optimizer steps, and
//! bad input stops the run with a message before anything is loaded.

use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::experiment::learner::{checkpoint_epochs, fit, model_checkpoint, LearnerRun};
use crate::experiment::model::{Norm, SmallCnn};
use crate::experiment::{DataSet, LabeledImages};

/// The first `train` and `test` images of the digits split.
fn digits(train: usize, test: usize) -> (LabeledImages, LabeledImages) {
    let (all_train, all_test) = DataSet::Digits.load().expect("the shipped digits");
    let first = |n: usize| (0..n).collect::<Vec<_>>();
    (
        all_train.subset(&first(train)),
        all_test.subset(&first(test)),
    )
}

/// A fresh directory for a run's checkpoints.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bnorm-learner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Batches of 4 per device, CBN's window in use from the fourth step.
fn run(norm: Norm, devices: usize, epochs: usize, dir: PathBuf) -> LearnerRun {
    LearnerRun {
        norm,
        devices: vec![Device::flex(); devices],
        batch_size: 4,
        epochs,
        seed: 5,
        learning_rate: 0.02,
        cbn_burn_in: 3,
        dir,
        resume: false,
        dashboard: false,
    }
}

/// Every float the model holds (weights, running statistics, CBN's
/// history, the step counts), in visiting order.
fn floats(model: &SmallCnn) -> Vec<Vec<f32>> {
    struct Floats(Vec<Vec<f32>>);
    impl ModuleVisitor for Floats {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().try_to_vec().unwrap());
        }
    }
    let mut visitor = Floats(Vec::new());
    model.visit(&mut visitor);
    visitor.0
}

/// The largest difference between two models' floats.
fn max_difference(a: &SmallCnn, b: &SmallCnn) -> f32 {
    let (a, b) = (floats(a), floats(b));
    assert_eq!(a.len(), b.len(), "the same tensors");
    a.iter()
        .zip(&b)
        .flat_map(|(a, b)| {
            assert_eq!(a.len(), b.len(), "the same shapes");
            a.iter().zip(b).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// A two-epoch run, then the same run interrupted after its first epoch
/// (its later checkpoints removed) and resumed: the same model (weights and
/// layer state), the same count of steps. Returns the largest difference
/// between the two models.
fn resume_continues_the_run(norm: Norm, devices: usize) -> f32 {
    let name = format!("{}-{devices}", norm.short());
    let (train, test) = digits(48, 20);
    let steps_per_epoch = 48 / devices / 4;

    let dir = fresh_dir(&name);
    let whole = fit(
        &run(norm, devices, 2, dir.clone()),
        train.clone(),
        test.clone(),
    )
    .unwrap();
    assert_eq!(checkpoint_epochs(&dir), [1, 2]);
    for file in ["model", "optim", "scheduler"] {
        std::fs::remove_file(dir.join("checkpoint").join(format!("{file}-2.bpk"))).unwrap();
    }
    let resumed = LearnerRun {
        resume: true,
        ..run(norm, devices, 2, dir)
    };
    let resumed = fit(&resumed, train, test).unwrap();

    assert_eq!(resumed.resumed_after, Some(1));
    assert_eq!(whole.steps_per_epoch, steps_per_epoch);
    for outcome in [&whole, &resumed] {
        assert!(
            outcome
                .model
                .norm_steps()
                .iter()
                .all(|&s| s == 2 * steps_per_epoch),
            "{name}: the layers counted {:?} steps, expected {} each",
            outcome.model.norm_steps(),
            2 * steps_per_epoch
        );
    }
    max_difference(&whole.model, &resumed.model)
}

#[test]
fn learner_resume_is_bit_exact_on_one_device() {
    for norm in [Norm::BatchRenorm, Norm::CrossIter] {
        assert_eq!(
            resume_continues_the_run(norm, 1),
            0.0,
            "{}: the resumed run differs from the uninterrupted one",
            norm.name()
        );
    }
}

/// Two replicas: their updates and gradients meet in sums of two terms,
/// which commute, so the order the threads finish in does not matter and
/// the resumed run is bit for bit the uninterrupted one here too.
#[test]
fn learner_multi_device_resume_continues_the_run() {
    for norm in [Norm::BatchRenorm, Norm::CrossIter] {
        assert_eq!(
            resume_continues_the_run(norm, 2),
            0.0,
            "{}: the resumed two-device run differs from the uninterrupted one",
            norm.name()
        );
    }
}

/// Over two devices an epoch of 48 images in batches of 4 is 6 optimizer
/// steps, and the layers count 6, not 12.
#[test]
fn learner_multi_device_counts_optimizer_steps() {
    let (train, test) = digits(48, 20);
    for norm in [Norm::BatchRenorm, Norm::CrossIter] {
        let run = run(norm, 2, 1, fresh_dir(&format!("count-{}", norm.short())));
        let outcome = fit(&run, train.clone(), test.clone()).unwrap();
        assert_eq!(outcome.steps_per_epoch, 6);
        assert_eq!(outcome.model.norm_steps(), [6, 6, 6], "{}", norm.name());
        assert!(
            (0.0..=100.0).contains(&outcome.test_accuracy),
            "accuracy {}",
            outcome.test_accuracy
        );
    }
}

/// No device, nothing to resume, a checkpoint of another layer, a batch
/// larger than the data: a message naming what is wrong, and no training
/// (no checkpoint written, the existing one untouched).
#[test]
fn learner_refuses_bad_input() {
    let (train, test) = digits(16, 8);
    let error = |run: &LearnerRun| match fit(run, train.clone(), test.clone()) {
        Ok(_) => panic!("{run:?} trained"),
        Err(message) => message,
    };

    let no_device = run(Norm::CrossIter, 0, 1, fresh_dir("no-device"));
    assert_eq!(error(&no_device), "--devices must be at least 1, got 0");

    let dir = fresh_dir("refuse");
    let nothing = LearnerRun {
        resume: true,
        ..run(Norm::CrossIter, 1, 2, dir.clone())
    };
    let message = error(&nothing);
    assert!(
        message.starts_with("nothing to resume: no checkpoint in"),
        "{message}"
    );

    fit(
        &run(Norm::BatchRenorm, 1, 1, dir.clone()),
        train.clone(),
        test.clone(),
    )
    .unwrap();
    let saved = std::fs::read(model_checkpoint(&dir, 1)).unwrap();
    for norm in [Norm::CrossIter, Norm::BatchNorm] {
        let other_layer = LearnerRun {
            resume: true,
            ..run(norm, 1, 2, dir.clone())
        };
        let message = error(&other_layer);
        assert!(
            message.starts_with(&format!("cannot resume as {}: could not load", norm.name()))
                && message.contains("the checkpoint is of another layer"),
            "{message}"
        );
    }
    assert_eq!(checkpoint_epochs(&dir), [1], "no epoch trained");
    assert_eq!(std::fs::read(model_checkpoint(&dir, 1)).unwrap(), saved);

    let done = LearnerRun {
        resume: true,
        ..run(Norm::BatchRenorm, 1, 1, dir)
    };
    let message = error(&done);
    assert!(message.contains("nothing left to train"), "{message}");

    let too_large = LearnerRun {
        batch_size: 9,
        ..run(Norm::CrossIter, 2, 1, fresh_dir("too-large"))
    };
    assert_eq!(
        error(&too_large),
        "16 training images cannot fill a batch of 9 on each of 2 devices"
    );
}
