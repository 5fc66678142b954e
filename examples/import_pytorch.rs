//! Import the reference implementations' PyTorch checkpoints (ludvb's
//! BatchRenorm2d, Howal's CBatchNorm2d, each after a conv) and reproduce the
//! reference's eval outputs.
//!
//! ```sh
//! cargo run --release --example import_pytorch
//! ```

use std::path::Path;

use bnorm::pytorch::StateDict;
use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig, EpsPlacement};
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor, TensorData};

fn json_tensor(value: &serde_json::Value) -> TensorData {
    let shape: Vec<usize> = serde_json::from_value(value["shape"].clone()).unwrap();
    let data: Vec<f32> = serde_json::from_value(value["data"].clone()).unwrap();
    TensorData::new(data, shape)
}

fn main() {
    let device = Device::flex();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let case = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap()
    };
    let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);

    // ludvb/batchrenorm: conv.weight + norm.{weight,bias,running_mean,running_std,num_batches_tracked}
    let dict = StateDict::open(dir.join("brn2d_after_conv.pt")).unwrap_or_else(|e| panic!("{e}"));
    println!("brn2d_after_conv.pt keys: {:?}", dict.keys());
    let conv = dict
        .conv2d(
            "conv.",
            &Conv2dConfig::new([3, 4], [3, 3])
                .with_padding(padding.clone())
                .with_bias(false),
            &device,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let brn = dict
        .batch_renorm(
            "norm.",
            &BatchRenormConfig::new(4).with_eps_placement(EpsPlacement::OnStd),
            &device,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let reference = case("brn2d_after_conv");
    let y = brn.forward(conv.forward(Tensor::from_data(json_tensor(&reference["input"]), &device)));
    let expected = Tensor::<4>::from_data(json_tensor(&reference["eval_output"]), &device);
    println!(
        "BatchRenorm2d (step {}): max |ours - reference| = {:e}",
        brn.steps(),
        y.sub(expected).abs().max().into_scalar::<f32>()
    );

    // Howal/Cross-iterationBatchNorm: conv.weight + norm.{weight,bias,running_mean,running_var}
    let dict = StateDict::open(dir.join("cbn2d_after_conv.pt")).unwrap_or_else(|e| panic!("{e}"));
    let config = Conv2dCbnConfig::new([3, 5], [3, 3])
        .with_padding(padding)
        .with_bias(false)
        .with_norm(CrossIterBatchNormConfig::new(0).with_window(4).reference());
    let block = dict
        .conv2d_cbn("conv.", "norm.", &config, &device)
        .unwrap_or_else(|e| panic!("{e}"));
    let reference = case("cbn2d_after_conv");
    let y = block.forward(Tensor::from_data(json_tensor(&reference["input"]), &device));
    let expected = Tensor::<4>::from_data(json_tensor(&reference["eval_output"]), &device);
    println!(
        "CBatchNorm2d: max |ours - reference| = {:e}",
        y.sub(expected).abs().max().into_scalar::<f32>()
    );
}
