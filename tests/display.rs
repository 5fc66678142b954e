//! How the layers print, as burn's own layers do (`#[module(custom_display)]`):
//! their configuration and state counters on one line each.

use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::module::Module;
use burn::tensor::Device;

#[test]
fn layers_print_their_configuration() {
    let device = Device::flex().autodiff();
    let brn = BatchRenormConfig::new(4).init(&device);
    let text = brn.to_string();
    println!("{text}");
    for part in [
        "BatchRenorm",
        "num_features: 4",
        "momentum: 0.01",
        "steps: 0",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(
        !text.contains("training"),
        "an enabled flag is not shown: {text}"
    );
    let frozen = brn.freeze().to_string();
    assert!(
        frozen.contains("training"),
        "a frozen layer says so: {frozen}"
    );

    let block = Conv2dCbnConfig::new([2, 3], [3, 3])
        .with_norm(CrossIterBatchNormConfig::new(3).with_window(4))
        .init(&device);
    let text = block.to_string();
    println!("{text}");
    for part in [
        "Conv2dCbn",
        "CrossIterBatchNorm",
        "window: 4",
        "steps: 0",
        "history_len: 0",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
}
