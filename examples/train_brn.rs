//! Trains the digits CNN at batch size 2 with burn's BatchNorm and with
//! BatchRenorm, and prints the test accuracy of each (inference mode).
//!
//! ```sh
//! cargo run --release --example train_brn -- [epochs]
//! ```

mod experiment;

use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;

use experiment::model::Norm;
use experiment::train::{train_and_evaluate, RunConfig, Sampling};
use experiment::LabeledImages;

fn main() {
    let epochs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("epochs: a number"))
        .unwrap_or(2);
    let data = LabeledImages::load_csv_gz(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/optdigits-1797.csv.gz"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (train, test) = data.split(0);
    let device = Device::flex().autodiff();
    println!(
        "UCI optical digits: {} train / {} test images, batch size 2, {epochs} epochs",
        train.len(),
        test.len()
    );
    for norm in [Norm::BatchNorm, Norm::BatchRenorm] {
        for sampling in [Sampling::Iid, Sampling::Paired] {
            let start = Instant::now();
            let cfg = RunConfig {
                norm,
                batch_size: 2,
                epochs,
                sampling,
                seed: 1,
                replay: None,
            };
            let acc = train_and_evaluate(&cfg, &train, &test, &device, |_, _, _| {});
            println!(
                "{:<12} {:<7} test accuracy {acc:5.1}%  ({:.1}s)",
                norm.name(),
                format!("{sampling:?}"),
                start.elapsed().as_secs_f64()
            );
        }
    }
}
