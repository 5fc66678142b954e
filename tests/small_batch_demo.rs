//! Guards the small-batch demo: its training loop runs a few steps for every
//! normalization and sampling on a handful of samples, its loaders read the
//! shipped data sets and what they should and reject what they should not,
//! its report shows every configuration, and its replay diagnostic cuts the
//! gradient where it says.

use crate::experiment;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use experiment::idx::{load_idx, write_idx, IdxData};
use experiment::model::{Norm, SmallCnn};
use experiment::report::{columns, csv, markdown_table, svg_plot, RunResult};
use experiment::train::{
    epoch_batches, images, labels, seeded, train_and_evaluate, Replay, ReplayGradient, RunConfig,
    Sampling,
};
use experiment::{DataSet, LabeledImages, SplitMix64};

fn tiny_digits(n: usize, side: usize) -> LabeledImages {
    let mut rng = SplitMix64(3);
    LabeledImages {
        rows: side,
        cols: side,
        images: (0..n)
            .map(|_| {
                (0..side * side)
                    .map(|_| (rng.below(256) as f32) / 255.0)
                    .collect()
            })
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

/// One epoch on 24 samples for every normalization and both samplings:
/// finite accuracy in [0, 100], and the same number twice for one seed.
#[test]
fn training_loop_runs_every_normalization() {
    let train = tiny_digits(24, 8);
    let test = tiny_digits(10, 8);
    for norm in [
        Norm::BatchNorm,
        Norm::BatchRenorm,
        Norm::CrossIter,
        Norm::CrossIterReference,
        Norm::GroupNorm,
    ] {
        for sampling in [Sampling::Iid, Sampling::Paired] {
            let cfg = RunConfig {
                norm,
                batch_size: 4,
                epochs: 1,
                sampling,
                seed: 5,
                replay: None,
            };
            let mut steps = 0;
            let run = |steps: &mut usize| {
                train_and_evaluate(
                    &cfg,
                    &train,
                    &test,
                    &Device::flex().autodiff(),
                    |_, _, _| *steps += 1,
                )
            };
            let a = run(&mut steps);
            assert!(
                (0.0..=100.0).contains(&a),
                "{norm:?} {sampling:?}: accuracy {a}"
            );
            let expected = epoch_batches(&train, 4, sampling, &mut SplitMix64(0)).len();
            assert_eq!(steps, expected, "{norm:?} {sampling:?}: one step per batch");
            assert!(expected >= 5);
            let b = run(&mut 0);
            assert_eq!(
                a, b,
                "{norm:?} {sampling:?}: not reproducible for a fixed seed"
            );
        }
    }
    // Batch size 1 trains too (CBN with its history, BRN with r and d).
    let cfg = RunConfig {
        norm: Norm::CrossIter,
        batch_size: 1,
        epochs: 1,
        sampling: Sampling::Iid,
        seed: 1,
        replay: None,
    };
    let acc = train_and_evaluate(
        &cfg,
        &tiny_digits(12, 8),
        &test,
        &Device::flex().autodiff(),
        |_, _, _| {},
    );
    assert!(acc.is_finite());
}

/// Paired batches: every batch is batch/2 same-class pairs.
#[test]
fn paired_batches_hold_same_class_pairs() {
    let data = tiny_digits(40, 8);
    let batches = epoch_batches(&data, 4, Sampling::Paired, &mut SplitMix64(9));
    // 4 samples per class: 2 pairs each, 20 pairs, 2 pairs per batch.
    assert_eq!(batches.len(), 10);
    for batch in &batches {
        assert_eq!(batch.len(), 4);
        for pair in batch.chunks(2) {
            assert_eq!(
                data.labels[pair[0]], data.labels[pair[1]],
                "batch {batch:?}"
            );
        }
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bnorm-idx-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The loader reads back exactly what was written (pixels / 255).
#[test]
fn idx_round_trip() {
    let dir = temp("roundtrip");
    let data = IdxData {
        rows: 3,
        cols: 2,
        images: vec![vec![0.0, 1.0, 0.5019608, 0.0, 0.2, 1.0], vec![1.0; 6]],
        labels: vec![7, 0],
    };
    write_idx(&dir.join("img"), &dir.join("lbl"), &data).unwrap();
    let read = load_idx(&dir.join("img"), &dir.join("lbl")).unwrap();
    assert_eq!(
        (read.rows, read.cols, read.labels.clone()),
        (3, 2, vec![7, 0])
    );
    for (a, b) in read
        .images
        .iter()
        .flatten()
        .zip(data.images.iter().flatten())
    {
        assert!((a - b).abs() < 0.5 / 255.0, "{a} vs {b}");
    }
    let digits = LabeledImages::load_idx(&dir.join("img"), &dir.join("lbl")).unwrap();
    assert_eq!((digits.rows, digits.cols, digits.len()), (3, 2, 2));
    std::fs::remove_dir_all(&dir).ok();
}

/// Truncated files, wrong magic numbers and mismatched counts are errors
/// that say what is wrong.
#[test]
fn idx_rejects_bad_files() {
    let dir = temp("bad");
    let data = IdxData {
        rows: 2,
        cols: 2,
        images: vec![vec![0.0; 4]; 3],
        labels: vec![1, 2, 3],
    };
    let (img, lbl) = (dir.join("img"), dir.join("lbl"));
    write_idx(&img, &lbl, &data).unwrap();

    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(dir.join("short"), &bytes[..bytes.len() - 1]).unwrap();
    let e = load_idx(&dir.join("short"), &lbl).unwrap_err();
    assert!(
        e.contains("expected 28") && e.contains("3 images of 2x2"),
        "{e}"
    );

    std::fs::write(dir.join("header"), &bytes[..9]).unwrap();
    let e = load_idx(&dir.join("header"), &lbl).unwrap_err();
    assert!(e.contains("truncated IDX header"), "{e}");

    let e = load_idx(&lbl, &img).unwrap_err();
    assert!(
        e.contains("magic number 0x00000801") && e.contains("expected 0x00000803"),
        "{e}"
    );

    let fewer = IdxData {
        labels: vec![1, 2],
        images: vec![vec![0.0; 4]; 2],
        ..data.clone()
    };
    write_idx(&dir.join("img2"), &dir.join("lbl2"), &fewer).unwrap();
    let e = load_idx(&img, &dir.join("lbl2")).unwrap_err();
    assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");

    let e = load_idx(&dir.join("missing"), &lbl).unwrap_err();
    assert!(e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Sum of an image's bytes (pixels * 255), a checksum of what was read.
fn byte_sum(image: &[f32]) -> u64 {
    image.iter().map(|&p| (p * 255.0).round() as u64).sum()
}

fn class_counts(data: &LabeledImages) -> [usize; 10] {
    let mut counts = [0; 10];
    for &label in &data.labels {
        counts[label as usize] += 1;
    }
    counts
}

/// The shipped Fashion-MNIST-12k files: 10,000 / 2,000 28x28 images, 1,000
/// / 200 per class, and the first images' labels and bytes as the files
/// hold them (checked with Python's gzip module).
#[test]
fn fashion_loads_as_shipped() {
    let (train, test) = DataSet::Fashion.load().unwrap();
    assert_eq!((train.rows, train.cols, train.len()), (28, 28, 10_000));
    assert_eq!((test.rows, test.cols, test.len()), (28, 28, 2_000));
    assert_eq!(class_counts(&train), [1_000; 10]);
    assert_eq!(class_counts(&test), [200; 10]);
    assert!(train
        .images
        .iter()
        .flatten()
        .all(|p| (0.0..=1.0).contains(p)));
    assert_eq!((train.labels[0], byte_sum(&train.images[0])), (3, 29_376));
    assert_eq!((test.labels[0], byte_sum(&test.images[0])), (7, 30_199));
}

/// The digits protocol: 1437 train / 360 test 8x8 images, pixels in [0, 1].
#[test]
fn digits_load_as_shipped() {
    let (train, test) = DataSet::Digits.load().unwrap();
    assert_eq!((train.rows, train.cols, train.len()), (8, 8, 1437));
    assert_eq!((test.rows, test.cols, test.len()), (8, 8, 360));
    assert_eq!(class_counts(&train).iter().sum::<usize>(), 1437);
    assert!(class_counts(&test).iter().all(|&n| n > 20));
    assert!(train
        .images
        .iter()
        .flatten()
        .all(|p| (0.0..=1.0).contains(p)));
}

/// A few training steps on a handful of Fashion images: BRN and CBN at
/// batch 2 fit 40 images well above chance (10%) in 60 steps.
#[test]
fn fashion_trains_on_a_handful() {
    let (train, _) = DataSet::Fashion.load().unwrap();
    let handful = train.subset(&(0..40).collect::<Vec<_>>());
    for norm in [Norm::BatchRenorm, Norm::CrossIter] {
        let cfg = RunConfig {
            norm,
            batch_size: 2,
            epochs: 3,
            sampling: Sampling::Iid,
            seed: 2,
            replay: None,
        };
        let mut steps = 0;
        let accuracy = train_and_evaluate(
            &cfg,
            &handful,
            &handful,
            &Device::flex().autodiff(),
            |_, _, _| steps += 1,
        );
        assert_eq!(steps, 60, "{norm:?}");
        // BRN reaches 47.5%, CBN 32.5% (still in its 100-step burn-in).
        assert!(
            accuracy >= 25.0,
            "{norm:?}: {accuracy}% on its own 40 training images"
        );
    }
}

/// The table, CSV and plot hold every configuration's mean over seeds.
#[test]
fn report_shows_every_configuration() {
    let run = |norm, batch_size, sampling, seed, accuracy| RunResult {
        norm,
        batch_size,
        sampling,
        seed,
        accuracy,
        seconds: 1.0,
    };
    let results = [
        run(Norm::BatchNorm, 1, Sampling::Iid, 2, 40.0),
        run(Norm::BatchNorm, 1, Sampling::Iid, 1, 30.0),
        run(Norm::BatchNorm, 2, Sampling::Iid, 1, 80.0),
        run(Norm::BatchNorm, 2, Sampling::Paired, 1, 20.0),
        run(Norm::CrossIter, 1, Sampling::Iid, 1, 90.0),
        run(Norm::CrossIter, 2, Sampling::Iid, 1, 91.0),
        run(Norm::CrossIter, 2, Sampling::Paired, 1, 92.5),
    ];
    let norms = [Norm::BatchNorm, Norm::CrossIter];
    let cols = columns(&[1, 2], &[Sampling::Iid, Sampling::Paired]);
    assert_eq!(
        cols,
        [
            (1, Sampling::Iid),
            (2, Sampling::Iid),
            (2, Sampling::Paired)
        ]
    );
    assert_eq!(
        markdown_table(&results, &norms, &cols),
        "| normalization | batch 1 iid | batch 2 iid | batch 2 paired |\n\
         |---|---:|---:|---:|\n\
         | BatchNorm | 35.0% | 80.0% | 20.0% |\n\
         | CBN | 90.0% | 91.0% | 92.5% |\n"
    );
    let csv = csv(&results, &norms, &cols);
    assert!(
        csv.contains("BatchNorm,1,iid,2,35.00,30.00 40.00,1.0\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 7);
    let svg = svg_plot(&results, &norms, &cols, "accuracy").unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    for text in [
        "iid batches",
        "paired batches",
        "BatchNorm",
        "CBN",
        "batch size",
        "accuracy",
    ] {
        assert!(svg.contains(text), "{text} missing from the plot");
    }
    // In each normalization's colour: one line per panel and one legend
    // entry per panel; one marker per configuration.
    for colour in ["#D62728", "#1F77B4"] {
        assert_eq!(
            svg.matches(&format!("stroke=\"{colour}\"")).count(),
            4,
            "{colour}"
        );
    }
    assert_eq!(svg.matches("<circle").count(), 6);
}

/// The replay diagnostic's trained rows see the same forward values in
/// every mode (the statistics of all rows), and the replayed rows' gradient
/// stops where each mode says: 2 trained and 4 replayed rows, loss on the
/// trained ones, gradients compared parameter by parameter.
#[test]
fn replay_cuts_the_gradient_where_it_says() {
    let device = Device::flex().autodiff();
    let data = tiny_digits(6, 8);
    let rows: Vec<usize> = (0..6).collect();
    let model = seeded(7, &device, || SmallCnn::new(Norm::BatchNorm, 10, &device));
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let run = |gradient| {
        let logits = model
            .forward_replaying(images(&data, &rows, &device), 2, gradient)
            .slice(0..2);
        let loss = loss_fn.forward(logits.clone(), labels(&data, &rows[..2], &device));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (values(logits), parameter_gradients(&model, &grads))
    };
    let plain = values(model.forward(images(&data, &rows, &device)).slice(0..2));
    let (all, layer, affine) = (
        run(ReplayGradient::All),
        run(ReplayGradient::Layer),
        run(ReplayGradient::Affine),
    );
    assert_eq!(all.0, plain, "all: the trained rows' logits");
    assert_eq!(layer.0, plain, "layer: the trained rows' logits");
    // `gamma * (y - beta) / gamma + beta` rounds.
    assert!(
        max_gap(&affine.0, &plain) < 1e-5,
        "affine: the trained rows' logits"
    );

    let gradient = |run: &(Vec<f32>, Vec<(String, Vec<f32>)>), name: &str| {
        let found = run.1.iter().find(|(path, _)| path == name);
        found
            .unwrap_or_else(|| {
                panic!(
                    "no parameter {name} in {:?}",
                    run.1.iter().map(|p| &p.0).collect::<Vec<_>>()
                )
            })
            .1
            .clone()
    };
    let same = |a: &[f32], b: &[f32]| max_gap(a, b) < 1e-6;
    // What the trained rows' loss reaches past the last statistics, and the
    // last block's own conv (the replayed rows reach it in every mode).
    for name in [
        "head.weight",
        "blocks.2.Plain.norm.BatchNorm.gamma",
        "blocks.2.Plain.conv.weight",
    ] {
        let reference = gradient(&all, name);
        assert!(reference.iter().any(|g| *g != 0.0), "{name}: a gradient");
        assert!(same(&gradient(&layer, name), &reference), "layer: {name}");
        assert!(same(&gradient(&affine, name), &reference), "affine: {name}");
    }
    // Block 1's scale and shift feed block 2's statistics through the
    // replayed rows: all and affine, not layer.
    for name in [
        "blocks.1.Plain.norm.BatchNorm.gamma",
        "blocks.1.Plain.norm.BatchNorm.beta",
    ] {
        let reference = gradient(&all, name);
        assert!(same(&gradient(&affine, name), &reference), "affine: {name}");
        assert!(!same(&gradient(&layer, name), &reference), "layer: {name}");
    }
    // Block 1's conv weight reaches block 2's statistics through its
    // replayed rows only with all.
    let name = "blocks.1.Plain.conv.weight";
    assert!(
        same(&gradient(&affine, name), &gradient(&layer, name)),
        "{name}"
    );
    assert!(
        !same(&gradient(&all, name), &gradient(&layer, name)),
        "{name}"
    );
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Each float parameter's gradient, by its path in the module.
fn parameter_gradients(model: &SmallCnn, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    struct Gradients<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        found: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for Gradients<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let gradient = self
                .grads
                .get::<D>(param.id)
                .map(values)
                .unwrap_or_default();
            self.found.push((self.path.join("."), gradient));
        }
    }
    let mut visitor = Gradients {
        grads,
        path: Vec::new(),
        found: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.found
}

/// The training loop with the replay diagnostic: every step trained, an
/// accuracy in [0, 100], the same twice for one seed.
#[test]
fn training_loop_replays() {
    let train = tiny_digits(24, 8);
    let test = tiny_digits(10, 8);
    let device = Device::flex().autodiff();
    let run = |replay| {
        let cfg = RunConfig {
            norm: Norm::BatchNorm,
            batch_size: 2,
            epochs: 2,
            sampling: Sampling::Paired,
            seed: 4,
            replay,
        };
        let mut steps = 0;
        let accuracy = train_and_evaluate(&cfg, &train, &test, &device, |_, _, _| steps += 1);
        // One same-class pair per class (2 or 3 samples each), 2 epochs.
        assert_eq!(steps, 20, "{replay:?}");
        assert!((0.0..=100.0).contains(&accuracy), "{replay:?}: {accuracy}");
        accuracy
    };
    let replay = Some(Replay {
        batches: 3,
        gradient: ReplayGradient::Layer,
    });
    let replayed = run(replay);
    assert_eq!(run(replay), replayed, "one seed, one accuracy");
}
