//! Data-parallel training, as burn-train's `MultiDevice` strategy runs it:
//! each replica is a clone of the model forked on its own thread (clones
//! share the layers' state), runs forward and backward on its own batch and
//! converts its gradients (a visit of the model) before the next step.
//!
//! The semantics checked here:
//! - a replica normalizes with its own batch (unlike a synchronized
//!   BatchNorm), and does not see another replica's update of the same step;
//! - CBN's new history entry is the mean of the replicas' entries, which
//!   for equal batches is the entry of their pooled samples, so the window
//!   holds the past steps of every device;
//! - BRN's running mean becomes the pooled batch's; its running std the
//!   mean of the replicas' batch stds;
//! - the step counters count steps, not replicas.

use crate::common::random::{host_seeded, uniform};
use crate::common::*;

use bnorm::core::HistoryEntries;
use bnorm::{BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};

/// A data-parallel step: one replica per batch, each on its own thread
/// (started one after another, so the first has finished its step when
/// the second reads the state), then the optimizer step on the calling
/// thread (learning rate 0: the weights stay, the state merges as the
/// Learner's optimizer step merges it); the replicas' outputs.
fn replicas_step<M, const D: usize>(
    module: &mut M,
    batches: &[Tensor<4>],
    forward: fn(&M, Tensor<4>) -> Tensor<D>,
) -> Vec<TensorData>
where
    M: Module + Send + 'static,
{
    let mut grads = None;
    let outputs = batches
        .iter()
        .map(|batch| {
            let (module, batch) = (module.clone(), batch.clone());
            let (output, replica_grads) = std::thread::spawn(move || {
                let device = batch.device();
                let replica = module.fork(&device);
                let output = forward(&replica, batch);
                let loss = output.clone().sum();
                // What `TrainOutput::new` does on the worker: a visit.
                let grads = GradientsParams::from_grads(loss.backward(), &replica);
                (output.into_data(), grads)
            })
            .join()
            .expect("replica step");
            grads.get_or_insert(replica_grads);
            output
        })
        .collect();
    let grads = grads.expect("at least one replica");
    *module = SgdConfig::new().init().step(0.0, module.clone(), grads);
    outputs
}

/// An independent copy (its own state): a new module loaded from the record.
fn copy<M: Module>(module: &M, fresh: M) -> M {
    fresh.load_record(module.clone().into_record())
}

fn cbn_config() -> Conv2dCbnConfig {
    Conv2dCbnConfig::new([2, 3], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_norm(
            CrossIterBatchNormConfig::new(3)
                .with_window(3)
                .with_burn_in(0),
        )
}

fn cbn_forward(layer: &Conv2dCbn, x: Tensor<4>) -> Tensor<4> {
    layer.forward(x)
}

/// The history buffers, every replica's update included.
fn entries(layer: &Conv2dCbn) -> HistoryEntries {
    let history = layer.norm.history.as_ref().expect("window > 1");
    HistoryEntries {
        mean: history.mean.value(),
        mean_sq: history.mean_sq.value(),
        jac_mean: history.jac_mean.value(),
        jac_mean_sq: history.jac_mean_sq.value(),
        lin_mean: history.lin_mean.value(),
        lin_mean_sq: history.lin_mean_sq.value(),
    }
}

/// Every buffer of `actual` against `expected`, to float rounding.
fn check_entries(what: &str, actual: HistoryEntries, expected: HistoryEntries) {
    let data = |e: HistoryEntries| {
        [
            ("mean", e.mean.into_data()),
            ("mean_sq", e.mean_sq.into_data()),
            ("lin_mean", e.lin_mean.into_data()),
            ("lin_mean_sq", e.lin_mean_sq.into_data()),
            ("jac_mean", e.jac_mean.into_data()),
            ("jac_mean_sq", e.jac_mean_sq.into_data()),
        ]
    };
    for ((name, actual), (_, expected)) in data(actual).into_iter().zip(data(expected)) {
        check_data(&format!("{what}: {name}"), &actual, expected);
    }
}

fn check_output(what: &str, actual: &TensorData, expected: Tensor<4>) {
    check_data(what, actual, expected.into_data());
}

fn check_data(what: &str, actual: &TensorData, expected: TensorData) {
    let values: Vec<f32> = expected.try_to_vec().unwrap();
    check_close(what, actual, expected.shape(), &values, 1e-5, 1e-6)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Two replicas fed batches A and B leave the history entry one replica fed
/// A ∪ B leaves; each normalizes with its own batch; the next step's
/// replicas both read the pooled entry.
fn history_is_the_pooled_batch(device: &Device) {
    let mut layer = host_seeded(cbn_config().init(device), 7);
    let fresh = || cbn_config().init(device);
    let [a, b, c, d] = [11, 12, 13, 14].map(|seed| uniform([2, 2, 5, 5], seed, -1.0, 2.0, device));

    // The single-device run on the pooled batch, and each batch alone.
    let pooled = copy(&layer, fresh());
    let alone_a = copy(&layer, fresh()).forward(a.clone());
    let alone_b = copy(&layer, fresh()).forward(b.clone());
    pooled.forward(Tensor::cat(vec![a.clone(), b.clone()], 0));

    let outputs = replicas_step(&mut layer, &[a, b], cbn_forward);
    check_output("replica A normalizes with batch A", &outputs[0], alone_a);
    check_output("replica B normalizes with batch B", &outputs[1], alone_b);
    check_entries("history after one step", entries(&layer), entries(&pooled));
    assert_eq!((layer.norm.steps(), layer.norm.history_len()), (1, 1));

    // Step two: each replica's window holds the pooled entry.
    let alone_c = copy(&pooled, fresh()).forward(c.clone());
    let alone_d = copy(&pooled, fresh()).forward(d.clone());
    let outputs = replicas_step(&mut layer, &[c, d], cbn_forward);
    check_output("replica C's window", &outputs[0], alone_c);
    check_output("replica D's window", &outputs[1], alone_d);
    assert_eq!((layer.norm.steps(), layer.norm.history_len()), (2, 2));
}

device_test!(
    multi_device_history_is_the_pooled_batch,
    history_is_the_pooled_batch
);

fn brn_config() -> BatchRenormConfig {
    // Ramps that start at once: r and d act from the first steps.
    BatchRenormConfig::new(3)
        .with_momentum(0.1)
        .with_steps_compressed_to(4)
}

fn brn_forward(layer: &BatchRenorm, x: Tensor<4>) -> Tensor<4> {
    layer.forward(x)
}

/// BRN's running mean moves to the pooled batch's mean, its running std to
/// the mean of the replicas' batch stds (burn's averaging of replica
/// updates; the spread between the replicas' means is not in it); each
/// replica's `r`, `d` come from its own batch and the shared running ones.
fn brn_running_statistics(device: &Device) {
    let mut layer = brn_config().init(device);
    let fresh = || brn_config().init(device);
    let [a, b] = [21, 22].map(|seed| uniform([2, 3, 4, 4], seed, -1.0, 3.0, device));

    // Two steps, so the second one's r and d read the merged statistics.
    for step in 1..=2 {
        let alone_a = copy(&layer, fresh());
        let alone_b = copy(&layer, fresh());
        let pooled = copy(&layer, fresh());
        let expected_a = alone_a.forward(a.clone());
        let expected_b = alone_b.forward(b.clone());
        pooled.forward(Tensor::cat(vec![a.clone(), b.clone()], 0));

        let outputs = replicas_step(&mut layer, &[a.clone(), b.clone()], brn_forward);
        check_output(&format!("step {step}: replica A"), &outputs[0], expected_a);
        check_output(&format!("step {step}: replica B"), &outputs[1], expected_b);

        let mean = layer.running_mean.value().into_data();
        let expected: Vec<f32> = to_vec(pooled.running_mean.value());
        check_close(
            &format!("step {step}: running mean"),
            &mean,
            &[3],
            &expected,
            1e-5,
            1e-6,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let std = layer.running_std.value().into_data();
        let expected: Vec<f32> = to_vec(
            alone_a
                .running_std
                .value()
                .add(alone_b.running_std.value())
                .div_scalar(2.0),
        );
        check_close(
            &format!("step {step}: running std"),
            &std,
            &[3],
            &expected,
            1e-5,
            1e-6,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layer.steps(), step, "BRN counts steps, not replicas");
    }
}

device_test!(multi_device_brn_running_statistics, brn_running_statistics);

/// Three steps over four replicas: each counter moves by one a step, and
/// CBN's window fills one entry a step.
fn counters_count_steps(device: &Device) {
    let mut brn = brn_config().init(device);
    let mut cbn = cbn_config().init(device);
    let batches: Vec<Tensor<4>> = (0..4)
        .map(|seed| uniform([2, 3, 4, 4], 30 + seed, -1.0, 1.0, device))
        .collect();
    let cbn_batches: Vec<Tensor<4>> = (0..4)
        .map(|seed| uniform([2, 2, 5, 5], 40 + seed, -1.0, 1.0, device))
        .collect();
    for step in 1..=3 {
        replicas_step(&mut brn, &batches, brn_forward);
        replicas_step(&mut cbn, &cbn_batches, cbn_forward);
        assert_eq!(
            brn.steps(),
            step,
            "BatchRenorm after {step} steps over 4 replicas"
        );
        assert_eq!(
            cbn.norm.steps(),
            step,
            "CBN after {step} steps over 4 replicas"
        );
        assert_eq!(
            cbn.norm.history_len(),
            step.min(2),
            "CBN's window after {step} steps"
        );
    }
}

device_test!(multi_device_counters_count_steps, counters_count_steps);
