//! Fold a trained normalization into the conv before it for deployment:
//! one Conv2d, the same eval output, no normalization cost. Inference only:
//! the folded conv no longer normalizes.
//!
//! ```sh
//! cargo run --release --example fold_for_inference
//! ```

use bnorm::{BatchRenormConfig, Conv2dCbnConfig};
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Distribution, Tensor};

fn main() {
    let device = Device::flex().autodiff();
    // A few training steps so the running statistics are not the initial ones.
    let conv = Conv2dConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let brn = BatchRenormConfig::new(8).init(&device);
    let block = Conv2dCbnConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_window(4)
        .init(&device);
    for _ in 0..10 {
        let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.5, 1.5), &device);
        let _ = brn.forward(conv.forward(x.clone()));
        let _ = block.forward(x);
    }
    // Inference: valid() modules, then fold.
    let (conv, brn, block) = (conv.valid(), brn.valid(), block.valid());
    let inference = device.clone().inner();
    let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.5, 1.5), &inference);
    let folded = brn.fold_into_conv2d(&conv).expect("channels match");
    let diff = brn
        .forward(conv.forward(x.clone()))
        .sub(folded.forward(x.clone()))
        .abs()
        .max()
        .into_scalar::<f32>();
    println!("Conv2d + BatchRenorm  vs folded Conv2d: max difference {diff:e}");
    let diff = block
        .forward(x.clone())
        .sub(block.fold().forward(x))
        .abs()
        .max()
        .into_scalar::<f32>();
    println!("Conv2dCbn             vs folded Conv2d: max difference {diff:e}");
}
