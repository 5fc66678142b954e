//! Properties of BatchRenorm beyond the reference fixtures: BatchNorm
//! equivalence, batch of one, checkpoint resume, record and input checks.

use crate::common;

use bnorm::{BatchRenorm, BatchRenormConfig, EpsPlacement, Schedule};
use burn::module::Module;
use burn::nn::BatchNormConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::store::RecordError;
use burn::tensor::Device;
use burn::tensor::{Bool, Tensor, TensorData};
use common::random::uniform;
use common::*;

/// Deterministic host-generated data in [-1.5, 2.5).
fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    common::random::uniform(shape, seed, -1.5, 2.5, device)
}

/// With `rmax = 1, dmax = 0` and the same eps placement, BRN is BatchNorm:
/// output and every gradient match burn's `BatchNorm`, for ranks 2 to 5.
fn equals_batch_norm(device: &Device) {
    fn check<const D: usize>(device: &Device, shape: [usize; D]) {
        let c = shape[1];
        let brn: BatchRenorm = BatchRenormConfig::new(c)
            .with_epsilon(1e-5)
            .with_momentum(0.1)
            .with_rmax(Schedule::constant(1.0))
            .with_dmax(Schedule::constant(0.0))
            .init(device);
        let bn = BatchNormConfig::new(c)
            .with_epsilon(1e-5)
            .with_momentum(0.1)
            .init(device);
        for step in 0..3 {
            // Two independent leaves: each backward pass consumes its graph.
            let x = random::<D>(shape, step, device).require_grad();
            let x_bn = random::<D>(shape, step, device).require_grad();
            let g = random::<D>(shape, 100 + step, device);
            let y_brn = brn.forward(x.clone());
            let y_bn = bn.forward(x_bn.clone());
            let what = format!("{shape:?} step {step}");
            check_close(
                &format!("{what} output"),
                &y_brn.clone().into_data(),
                &shape,
                &y_bn.clone().into_data().try_to_vec::<f32>().unwrap(),
                1e-5,
                1e-6,
            )
            .unwrap();
            let grads_brn = y_brn.mul(g.clone()).sum().backward();
            let grads_bn = y_bn.mul(g).sum().backward();
            let gx_brn = x.grad(&grads_brn).unwrap().into_data();
            let gx_bn = x_bn.grad(&grads_bn).unwrap().into_data();
            check_close(
                &format!("{what} grad_input"),
                &gx_brn,
                &shape,
                &gx_bn.try_to_vec::<f32>().unwrap(),
                1e-4,
                1e-5,
            )
            .unwrap();
            let pairs = [
                (
                    brn.gamma.as_ref().unwrap().grad(&grads_brn),
                    bn.gamma.grad(&grads_bn),
                    "gamma",
                ),
                (
                    brn.beta.as_ref().unwrap().grad(&grads_brn),
                    bn.beta.grad(&grads_bn),
                    "beta",
                ),
            ];
            for (a, b, name) in pairs {
                check_close(
                    &format!("{what} grad_{name}"),
                    &a.unwrap().into_data(),
                    &[c],
                    &b.unwrap().into_data().try_to_vec::<f32>().unwrap(),
                    1e-4,
                    1e-5,
                )
                .unwrap();
            }
            // BatchNorm's running mean follows the same update.
            check_close(
                &format!("{what} running_mean"),
                &brn.running_mean.value_sync().into_data(),
                &[c],
                &bn.running_mean
                    .value_sync()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                1e-6,
                1e-7,
            )
            .unwrap();
        }
        // Inference: BN's running var vs BRN's running std are different
        // statistics, so only the shapes of the pipeline are compared here;
        // eval correctness is covered by the reference fixtures.
    }
    check::<2>(device, [4, 3]);
    check::<3>(device, [2, 3, 5]);
    check::<4>(device, [2, 3, 4, 5]);
    check::<5>(device, [2, 2, 3, 2, 2]);
}

device_test!(brn_with_rmax1_dmax0_is_batch_norm, equals_batch_norm);

/// A batch of one (one value per channel) gives finite output and finite
/// gradients with either eps placement, early (r = 1) and late in the
/// schedule (r, d clipping). The reference returns NaN gradients here.
fn batch_of_one(device: &Device) {
    fn check<const D: usize>(device: &Device, shape: [usize; D]) {
        for placement in [EpsPlacement::InsideSqrt, EpsPlacement::OnStd] {
            for compressed in [false, true] {
                let mut cfg = BatchRenormConfig::new(shape[1]).with_eps_placement(placement);
                if compressed {
                    cfg = cfg.with_steps_compressed_to(2);
                }
                let layer: BatchRenorm = cfg.init(device);
                for step in 0..4 {
                    let x = random::<D>(shape, step, device).require_grad();
                    let y = layer.forward(x.clone());
                    let what =
                        format!("{shape:?} {placement:?} compressed={compressed} step {step}");
                    assert_finite(&format!("{what} output"), &y.clone().into_data());
                    let grads = y.mul(random::<D>(shape, 7 + step, device)).sum().backward();
                    assert_finite(
                        &format!("{what} grad_input"),
                        &x.grad(&grads).unwrap().into_data(),
                    );
                    let gamma = layer.gamma.as_ref().unwrap().grad(&grads).unwrap();
                    assert_finite(&format!("{what} grad_gamma"), &gamma.into_data());
                    assert_finite(
                        &format!("{what} running_std"),
                        &layer.running_std.value_sync().into_data(),
                    );
                }
                let eval = layer.valid().forward(random::<D>(shape, 99, device));
                assert_finite("eval output", &eval.into_data());
            }
        }
    }
    check::<2>(device, [1, 3]);
    check::<4>(device, [1, 3, 1, 1]);
}

device_test!(brn_batch_of_one_is_finite, batch_of_one);

/// Runs `steps` SGD steps of a BRN layer (gamma, beta trained) on the
/// deterministic input stream starting at `first`, returning the outputs.
fn train(
    mut layer: BatchRenorm,
    first: u64,
    steps: u64,
    device: &Device,
) -> (BatchRenorm, Vec<TensorData>) {
    let mut optim = SgdConfig::new().init();
    let mut outputs = Vec::new();
    for step in first..first + steps {
        let x = random::<4>([2, 3, 4, 4], step, device);
        let y = layer.forward(x);
        outputs.push(owned(y.clone().into_data()));
        let grads = y
            .mul(random::<4>([2, 3, 4, 4], 1000 + step, device))
            .sum()
            .backward();
        let grads = GradientsParams::from_grads(grads, &layer);
        layer = optim.step(0.05, layer, grads);
    }
    (layer, outputs)
}

fn state(layer: &BatchRenorm) -> Vec<(&'static str, TensorData)> {
    vec![
        (
            "gamma",
            owned(layer.gamma.as_ref().unwrap().val().into_data()),
        ),
        (
            "beta",
            owned(layer.beta.as_ref().unwrap().val().into_data()),
        ),
        (
            "running_mean",
            owned(layer.running_mean.value_sync().into_data()),
        ),
        (
            "running_std",
            owned(layer.running_std.value_sync().into_data()),
        ),
        ("steps", owned(layer.steps.to_tensor().into_data())),
    ]
}

/// Train n steps, save, load into a fresh module, train m more: outputs and
/// state are bit-identical to n + m uninterrupted steps. The schedule is
/// compressed so that r and d clip during the run.
fn resume(device: &Device) {
    let config = BatchRenormConfig::new(3).with_steps_compressed_to(8);
    let (n, m) = (5, 4);
    let (straight, outputs_straight) = train(config.init(device), 0, n + m, device);

    let (first, _) = train(config.init(device), 0, n, device);
    let dir = std::env::temp_dir().join(format!(
        "bnorm-brn-resume-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brn.bpk");
    first.save_file(&path).unwrap();
    let fresh = config.init(device).load_checkpoint(&path).unwrap();
    assert_eq!(fresh.steps(), n as usize);
    let (resumed, outputs_resumed) = train(fresh, n, m, device);
    std::fs::remove_dir_all(&dir).ok();

    for (i, (a, b)) in outputs_straight[n as usize..]
        .iter()
        .zip(&outputs_resumed)
        .enumerate()
    {
        assert_bits_eq(&format!("output of step {}", n as usize + i), a, b);
    }
    for ((name, a), (_, b)) in state(&straight).iter().zip(state(&resumed).iter()) {
        assert_bits_eq(name, a, b);
    }
}

device_test!(brn_resume_is_bit_identical, resume);

/// A record for another channel count, or another affine setting, is an
/// error value that names the field and both shapes; through a file, the
/// error also names the path.
fn record_mismatch(device: &Device) {
    let record = BatchRenormConfig::new(4).init(device).into_record();
    let err = BatchRenormConfig::new(6)
        .init(device)
        .try_load_record(record)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gamma") && err.contains("[4]") && err.contains("[6]"),
        "{err}"
    );

    let record = BatchRenormConfig::new(4)
        .with_affine(false)
        .init(device)
        .into_record();
    let err = BatchRenormConfig::new(4)
        .init(device)
        .try_load_record(record)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gamma") && err.contains("Missing"), "{err}");

    let dir = std::env::temp_dir().join(format!(
        "bnorm-brn-mismatch-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let four = dir.join("four.bpk");
    BatchRenormConfig::new(4)
        .init(device)
        .save_file(&four)
        .unwrap();
    let err = BatchRenormConfig::new(5)
        .init(device)
        .load_checkpoint(&four)
        .unwrap_err();
    assert_eq!(err.path, four);
    let message = err.to_string();
    assert!(
        message.contains("four.bpk") && message.contains("[4]") && message.contains("[5]"),
        "{message}"
    );
    let absent = dir.join("absent.bpk");
    let missing = BatchRenormConfig::new(5)
        .init(device)
        .load_checkpoint(&absent)
        .unwrap_err();
    assert!(matches!(missing.error, RecordError::Io(_)), "{missing}");
    assert!(missing.to_string().contains("absent.bpk"), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

device_test!(brn_record_mismatch_is_an_error, record_mismatch);

/// Bad input panics with a message naming expected and received shapes,
/// and leaves the state as it was.
fn bad_input(device: &Device) {
    let layer: BatchRenorm = BatchRenormConfig::new(3).init(device);
    layer.forward(random::<3>([2, 3, 4], 0, device));
    let before = state(&layer);
    let m = panic_message(|| {
        layer.forward(random::<1>([3], 0, device));
    });
    assert!(
        m.contains("rank 2 to 5") && m.contains("rank-1") && m.contains("[3]"),
        "{m}"
    );
    let m = panic_message(|| {
        layer.forward(random::<6>([1, 3, 1, 1, 1, 2], 0, device));
    });
    assert!(m.contains("rank-6"), "{m}");
    let m = panic_message(|| {
        layer.forward(random::<4>([2, 5, 4, 4], 0, device));
    });
    assert!(
        m.contains("3 channels") && m.contains("[2, 5, 4, 4]"),
        "{m}"
    );
    let m = panic_message(|| {
        let mask = Tensor::<2, burn::tensor::Bool>::empty([2, 5], device);
        layer.forward_masked(random::<3>([2, 3, 4], 0, device), mask);
    });
    assert!(m.contains("[2, 4]") && m.contains("[2, 5]"), "{m}");
    for ((name, a), (_, b)) in before.iter().zip(state(&layer).iter()) {
        assert_bits_eq(&format!("{name} after rejected input"), a, b);
    }
}

device_test!(brn_bad_input_panics_clearly, bad_input);

/// No state tensor gets deeper in the autograd graph from one training
/// step to the next (see `assert_state_untracked`), unmasked and masked.
#[test]
fn brn_state_does_not_chain_steps() {
    let device = common::baseline();
    let brn = BatchRenormConfig::new(3).init(&device);
    let padding = || {
        let mask = vec![false, false, true, false, false, false, false, true];
        Tensor::<2, Bool>::from_data(TensorData::new(mask, [2, 4]), &device)
    };
    assert_state_untracked(
        "BatchRenorm",
        |step| {
            let x = uniform::<3>([2, 3, 4], step, -1.0, 1.0, &device);
            let _ = brn.forward(x.clone().require_grad()).sum().backward();
            let masked = brn.forward_masked(x.require_grad(), padding());
            let _ = masked.sum().backward();
        },
        || {
            vec![
                ("running_mean", brn.running_mean.value_sync().is_tracked()),
                ("running_std", brn.running_std.value_sync().is_tracked()),
                // `steps` is a host count (HostCounter), outside any graph.
            ]
        },
    );
}
