//! Trains the digits CNN with Conv2dCbn at a small batch size, with the
//! gradient through the compensated history (the library default) and
//! without (the reference's choice), next to burn's BatchNorm.
//!
//! ```sh
//! cargo run --release --example train_cbn -- [batch_size] [epochs]
//! ```

mod experiment;

use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;

use experiment::model::Norm;
use experiment::train::{train_and_evaluate, RunConfig, Sampling};
use experiment::LabeledImages;

fn main() {
    let mut args = std::env::args().skip(1);
    let batch_size: usize = args
        .next()
        .map(|a| a.parse().expect("batch size: a number"))
        .unwrap_or(1);
    let epochs: usize = args
        .next()
        .map(|a| a.parse().expect("epochs: a number"))
        .unwrap_or(2);
    let data = LabeledImages::load_csv_gz(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/optdigits-1797.csv.gz"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (train, test) = data.split(0);
    let device = Device::flex().autodiff();
    println!(
        "UCI optical digits: {} train / {} test, batch size {batch_size}, {epochs} epochs",
        train.len(),
        test.len()
    );
    for norm in [Norm::CrossIter, Norm::CrossIterReference, Norm::BatchNorm] {
        let start = Instant::now();
        let cfg = RunConfig {
            norm,
            batch_size,
            epochs,
            sampling: Sampling::Iid,
            seed: 1,
            replay: None,
        };
        let acc = train_and_evaluate(&cfg, &train, &test, &device, |_, _, _| {});
        println!(
            "{:<16} test accuracy {acc:5.1}%  ({:.1}s)",
            norm.name(),
            start.elapsed().as_secs_f64()
        );
    }
}
