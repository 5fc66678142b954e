//! Continue a model trained with burn's BatchNorm with a small-batch layer:
//! the eval output is unchanged right after the conversion.
//!
//! ```sh
//! cargo run --release --example from_batch_norm
//! ```

use bnorm::{BatchRenorm, BatchRenormConfig, Conv2dCbn, CrossIterBatchNormConfig};
use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};

fn main() {
    let device = Device::flex();
    // Stand-in for a pretrained conv + BatchNorm pair (in practice: loaded
    // from your checkpoint with `load_record`).
    let conv = Conv2dConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let mut bn = BatchNormConfig::new(8).init(&device);
    bn.gamma = Param::from_tensor(Tensor::random(
        [8],
        Distribution::Uniform(0.5, 1.5),
        &device,
    ));
    bn.beta = Param::from_tensor(Tensor::random(
        [8],
        Distribution::Uniform(-0.5, 0.5),
        &device,
    ));
    bn.running_mean = RunningState::new(Tensor::random(
        [8],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    ));
    bn.running_var = RunningState::new(Tensor::random(
        [8],
        Distribution::Uniform(0.2, 3.0),
        &device,
    ));
    let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let before = bn.forward(conv.forward(x.clone()));

    // BatchNorm -> BatchRenorm, starting the rmax/dmax schedule at step 0.
    let brn = BatchRenorm::from_batch_norm(
        &bn,
        &BatchRenormConfig::new(8).with_steps_compressed_to(10_000),
        0,
    )
    .expect("channel counts match");
    let after_brn = brn.forward(conv.forward(x.clone()));

    // Conv2d + BatchNorm -> Conv2dCbn (window 4).
    let cbn =
        Conv2dCbn::from_conv_batch_norm(conv, &bn, CrossIterBatchNormConfig::new(0).with_window(4))
            .expect("channel counts match");
    let after_cbn = cbn.forward(x);

    let diff = |a: Tensor<4>| before.clone().sub(a).abs().max().into_scalar::<f32>();
    println!(
        "max |BatchNorm - BatchRenorm| in eval: {:e}",
        diff(after_brn)
    );
    println!(
        "max |BatchNorm - Conv2dCbn|   in eval: {:e}",
        diff(after_cbn)
    );
}
