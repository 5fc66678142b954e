//! Bringing existing models: BatchNorm → BatchRenorm / CBN with unchanged
//! eval outputs, PyTorch checkpoints of the reference layers, and folding
//! into the preceding conv or linear layer for inference.

use crate::common;

use bnorm::pytorch::{ImportError, StateDict};
use bnorm::{
    BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig,
    EpsPlacement, LinearCbn,
};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Device;
use common::blocks::trained_batch_norm;
use common::random::{host_seeded, uniform};
use common::*;
use serde::Deserialize;

fn conv(device: &Device, bias: bool) -> Conv2d {
    let conv = Conv2dConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(bias)
        .init(device);
    host_seeded(conv, 1)
}

/// Conversions from BatchNorm keep the eval output: BRN, and the CBN of
/// conv and linear blocks with either eps placement.
fn from_batch_norm(device: &Device) {
    let inner = &device.clone().inner();
    let x4 = uniform::<4>([2, 4, 5, 5], 7, -2.0, 2.0, inner);
    let bn = trained_batch_norm(4, 1e-5, inner);
    let expected = to_vec(bn.forward(x4.clone()));
    let brn = BatchRenorm::from_batch_norm(&bn, &BatchRenormConfig::new(4), 1234).unwrap();
    assert_eq!(brn.steps(), 1234);
    check_close(
        "BRN from BatchNorm",
        &brn.forward(x4.clone()).into_data(),
        &[2, 4, 5, 5],
        &expected,
        1e-5,
        1e-5,
    )
    .unwrap();
    let err = BatchRenorm::from_batch_norm(&bn, &BatchRenormConfig::new(6), 0).unwrap_err();
    assert!(
        err.to_string().contains("[6]") && err.to_string().contains("[4]"),
        "{err}"
    );

    let x = uniform::<4>([2, 3, 5, 5], 8, -1.0, 1.0, inner);
    for placement in [EpsPlacement::InsideSqrt, EpsPlacement::OnStd] {
        let c = conv(inner, true);
        let expected = to_vec(bn.forward(c.forward(x.clone())));
        let cbn = Conv2dCbn::from_conv_batch_norm(
            c,
            &bn,
            CrossIterBatchNormConfig::new(0)
                .with_eps_placement(placement)
                .with_epsilon(1e-3),
        )
        .unwrap();
        check_close(
            &format!("Conv2dCbn from BatchNorm ({placement:?})"),
            &cbn.forward(x.clone()).into_data(),
            &[2, 4, 5, 5],
            &expected,
            1e-5,
            1e-5,
        )
        .unwrap();
    }
    let err = Conv2dCbn::from_conv_batch_norm(
        conv(inner, false),
        &trained_batch_norm(5, 1e-5, inner),
        CrossIterBatchNormConfig::new(0),
    )
    .unwrap_err();
    assert!(err.to_string().contains("[5]"), "{err}");

    let linear: Linear = host_seeded(LinearConfig::new(3, 4).init(inner), 2);
    let xl = uniform::<2>([6, 3], 9, -1.0, 1.0, inner);
    let expected = to_vec(bn.forward(linear.forward(xl.clone())));
    let lcbn =
        LinearCbn::from_linear_batch_norm(linear, &bn, CrossIterBatchNormConfig::new(0)).unwrap();
    check_close(
        "LinearCbn from BatchNorm",
        &lcbn.forward(xl).into_data(),
        &[6, 4],
        &expected,
        1e-5,
        1e-5,
    )
    .unwrap();

    // The converted CBN trains on (autodiff backend) from the BatchNorm's state.
    let trained = Conv2dCbn::from_conv_batch_norm(
        conv(device, false),
        &trained_batch_norm(4, 1e-5, device),
        CrossIterBatchNormConfig::new(0),
    )
    .unwrap();
    let y = trained.forward(uniform::<4>([1, 3, 5, 5], 1, -1.0, 1.0, device));
    assert_finite("converted CBN training output", &y.into_data());
}

device_test!(
    conversions_from_batch_norm_keep_eval_output,
    from_batch_norm
);

/// Folding equals the pair's eval output: conv (with and without bias) +
/// BRN, Conv2dCbn, linear + BRN, LinearCbn. Checked after a few training
/// steps so the running statistics are not the initial ones.
fn folding(device: &Device) {
    let inner = &device.clone().inner();
    // Through a convolution or matmul: TF32 on CUDA (see `check_matmul`).
    for bias in [false, true] {
        let c = conv(device, bias);
        let brn: BatchRenorm = BatchRenormConfig::new(4)
            .with_steps_compressed_to(3)
            .init(device);
        for step in 0..4 {
            let _ = brn.forward(c.forward(uniform([2, 3, 5, 5], step, -1.0, 2.0, device)));
        }
        let (c, brn) = (c.valid(), brn.valid());
        let x = uniform::<4>([2, 3, 5, 5], 9, -1.0, 2.0, inner);
        let expected = to_vec(brn.forward(c.forward(x.clone())));
        let folded = brn.fold_into_conv2d(&c).unwrap();
        check_matmul(
            device,
            &format!("conv(bias={bias}) + BRN folded"),
            &folded.forward(x).into_data(),
            &[2, 4, 5, 5],
            &expected,
        )
        .unwrap();
    }
    let block: Conv2dCbn = Conv2dCbnConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_window(3)
        .init(device);
    let block = host_seeded(block, 3);
    for step in 0..4 {
        let _ = block.forward(uniform([2, 3, 5, 5], step, -1.0, 2.0, device));
    }
    let block = block.valid();
    let x = uniform::<4>([2, 3, 5, 5], 10, -1.0, 2.0, inner);
    check_matmul(
        device,
        "Conv2dCbn folded",
        &block.fold().forward(x.clone()).into_data(),
        &[2, 4, 5, 5],
        &to_vec(block.forward(x)),
    )
    .unwrap();

    let linear: Linear = host_seeded(LinearConfig::new(3, 4).init(device), 4);
    let brn: BatchRenorm = BatchRenormConfig::new(4).init(device);
    for step in 0..3 {
        let _ = brn.forward(linear.forward(uniform([5, 3], step, -1.0, 2.0, device)));
    }
    let (linear, brn) = (linear.valid(), brn.valid());
    let xl = uniform::<2>([5, 3], 11, -1.0, 2.0, inner);
    check_matmul(
        device,
        "linear + BRN folded",
        &brn.fold_into_linear(&linear)
            .unwrap()
            .forward(xl.clone())
            .into_data(),
        &[5, 4],
        &to_vec(brn.forward(linear.forward(xl.clone()))),
    )
    .unwrap();
    let lblock = bnorm::LinearCbnConfig::new(3, 4)
        .with_window(2)
        .init(device);
    let lblock = host_seeded(lblock, 5);
    for step in 0..3 {
        let _ = lblock.forward(uniform::<2>([5, 3], step, -1.0, 2.0, device));
    }
    let lblock = lblock.valid();
    check_matmul(
        device,
        "LinearCbn folded",
        &lblock.fold().forward(xl.clone()).into_data(),
        &[5, 4],
        &to_vec(lblock.forward(xl)),
    )
    .unwrap();

    let err = BatchRenormConfig::new(5)
        .init(inner)
        .fold_into_conv2d(&conv(inner, false))
        .unwrap_err();
    assert!(err.to_string().contains("conv output channels"), "{err}");
}

device_test!(folding_equals_eval_output, folding);

#[derive(Deserialize)]
struct TorchCase {
    eps: f64,
    input: JsonTensor,
    eval_output: JsonTensor,
}

fn torch_case(name: &str) -> (TorchCase, std::path::PathBuf) {
    let dir = package_dir().join("tests/fixtures/torch");
    let case: TorchCase =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    (case, dir.join(format!("{name}.pt")))
}

/// The reference layers' PyTorch checkpoints import and reproduce the
/// reference's eval outputs.
fn pytorch_import(device: &Device) {
    let inner = &device.clone().inner();
    // Through a convolution or matmul: TF32 on CUDA (see `check_matmul`).
    let (case, pt) = torch_case("brn2d_after_conv");
    let dict = StateDict::open(&pt).unwrap();
    let conv_config = Conv2dConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false);
    let conv = dict.conv2d("conv.", &conv_config, inner).unwrap();
    let brn_config = BatchRenormConfig::new(4)
        .with_epsilon(case.eps)
        .with_eps_placement(EpsPlacement::OnStd);
    let brn = dict.batch_renorm("norm.", &brn_config, inner).unwrap();
    assert!(brn.steps() > 0, "num_batches_tracked imported");
    let y = brn.forward(conv.forward(case.input.tensor(inner)));
    check_matmul(
        device,
        "brn2d_after_conv eval output",
        &y.into_data(),
        &case.eval_output.shape,
        &case.eval_output.values(),
    )
    .unwrap();

    let (case, pt) = torch_case("cbn2d_after_conv");
    let dict = StateDict::open(&pt).unwrap();
    let config = Conv2dCbnConfig::new([3, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .with_norm(
            CrossIterBatchNormConfig::new(0)
                .with_window(4)
                .with_epsilon(case.eps)
                .reference(),
        );
    let block = dict.conv2d_cbn("conv.", "norm.", &config, inner).unwrap();
    let y = block.forward(case.input.tensor(inner));
    check_matmul(
        device,
        "cbn2d_after_conv eval output",
        &y.into_data(),
        &case.eval_output.shape,
        &case.eval_output.values(),
    )
    .unwrap();

    // Missing and mis-shaped keys are errors naming the key.
    let err = dict
        .batch_renorm("norm.", &BatchRenormConfig::new(5), inner)
        .err()
        .unwrap();
    assert!(
        matches!(&err, ImportError::MissingKey { key, .. } if key == "norm.running_std"),
        "{err}"
    );
    assert!(
        err.to_string().contains("norm.running_var"),
        "lists the keys: {err}"
    );
    let wrong = Conv2dCbnConfig::new([3, 6], [3, 3]).with_bias(false);
    let err = dict
        .conv2d_cbn("conv.", "norm.", &wrong, inner)
        .err()
        .unwrap();
    assert!(
        matches!(&err, ImportError::Shape { key, expected, found } if key == "conv.weight" && expected == &vec![6, 3, 3, 3] && found == &vec![5, 3, 3, 3]),
        "{err}"
    );
    assert!(matches!(
        StateDict::open(package_dir().join("tests/fixtures/torch/README.md")),
        Err(ImportError::Read(_))
    ));
}

device_test!(pytorch_checkpoints_reproduce_reference, pytorch_import);
