//! Fold a trained normalization into the conv before it for deployment:
//! one Conv2d, the same eval output, no normalization cost. Inference only:
//! the folded conv no longer normalizes.
//!
//! ```sh
//! cargo run --release --example fold_for_inference
//! ```

use bnorm::{BatchRenormConfig, Conv2dCbnConfig};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Distribution, Tensor};

fn main() {
    type Train = Autodiff<NdArray>;
    let device = Default::default();
    // A few training steps so the running statistics are not the initial ones.
    let conv = Conv2dConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init::<Train>(&device);
    let brn = BatchRenormConfig::new(8).init::<Train>(&device);
    let block = Conv2dCbnConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_window(4)
        .init::<Train>(&device);
    for _ in 0..10 {
        let x = Tensor::<Train, 4>::random([2, 3, 16, 16], Distribution::Normal(0.5, 1.5), &device);
        let _ = brn.forward(conv.forward(x.clone()));
        let _ = block.forward(x);
    }
    // Inference: valid() modules, then fold.
    let (conv, brn, block) = (conv.valid(), brn.valid(), block.valid());
    let x = Tensor::<NdArray, 4>::random([2, 3, 16, 16], Distribution::Normal(0.5, 1.5), &device);
    let folded = brn.fold_into_conv2d(&conv).expect("channels match");
    let diff = brn
        .forward(conv.forward(x.clone()))
        .sub(folded.forward(x.clone()))
        .abs()
        .max()
        .into_scalar();
    println!("Conv2d + BatchRenorm  vs folded Conv2d: max difference {diff:e}");
    let diff = block
        .forward(x.clone())
        .sub(block.fold().forward(x))
        .abs()
        .max()
        .into_scalar();
    println!("Conv2dCbn             vs folded Conv2d: max difference {diff:e}");
}
