//! `HostCounter`, the step counts (BRN's and CBN's `steps` and
//! `history.fill`) kept on the host: its record is the one a
//! `RunningState<Tensor<1>>` field wrote (checkpoints of either layout
//! load into the other), it behaves like burn's state under clone, `valid`,
//! map and visit, and CBN's burn-in steps skip the window's work.

use crate::common;

use bnorm::core::compensation::MomentJacobians;
use bnorm::core::COUNT_SATURATION;
use bnorm::crossiter::WeightLayout;
use bnorm::{CrossIterBatchNormConfig, HostCounter};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, RunningState};
use burn::store::ModuleRecord;
use burn::tensor::Device;
use burn::tensor::{Tensor, TensorData};
use common::random::uniform;
use common::*;

/// The layout of BatchRenorm's and CBN's counters before `HostCounter`.
#[derive(Module, Debug)]
struct TensorCounter {
    steps: RunningState<Tensor<1>>,
}

#[derive(Module, Debug)]
struct HostCounted {
    steps: HostCounter,
}

fn value(state: &RunningState<Tensor<1>>) -> Vec<f32> {
    state.value_sync().into_data().try_to_vec().unwrap()
}

/// `record` written to bytes and read back, as a checkpoint file holds it.
fn through_bytes(record: ModuleRecord) -> ModuleRecord {
    ModuleRecord::from_bytes(record.into_bytes().unwrap()).unwrap()
}

fn records_interchange(device: &Device) {
    let old = TensorCounter {
        steps: RunningState::new(Tensor::from_data(
            TensorData::new(vec![4321.0f32], [1]),
            device,
        )),
    };
    let new = HostCounted {
        steps: HostCounter::new(device),
    }
    .load_record(through_bytes(old.into_record()));
    assert_eq!(new.steps.get(), 4321.0, "old layout -> HostCounter");

    new.steps.increment();
    let old = TensorCounter {
        steps: RunningState::new(Tensor::zeros([1], device)),
    }
    .load_record(through_bytes(new.into_record()));
    assert_eq!(value(&old.steps), vec![4322.0], "HostCounter -> old layout");
}

device_test!(
    counter_records_interchange_with_running_state,
    records_interchange
);

/// Counts every float tensor a visitor sees and doubles every one a mapper
/// sees.
struct Floats(Vec<Vec<f32>>);

impl ModuleVisitor for Floats {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data().try_to_vec().unwrap());
    }
}

struct Double;

impl ModuleMapper for Double {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.mul_scalar(2.0))
    }
}

/// Replaces every float tensor with a new one, without reading it, as
/// burn-store's loaders do.
struct Load(f32);

impl ModuleMapper for Load {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let values = vec![self.0; shape.num_elements()];
        let tensor = Tensor::from_data(TensorData::new(values, shape), &param.lazy_device());
        Param::initialized(param.id, tensor)
    }
}

#[test]
fn counter_counts_shares_and_copies_like_burn_state() {
    let device = common::baseline();
    let counter = HostCounter::new(&device);
    assert_eq!(
        (counter.get(), counter.increment(), counter.get()),
        (0.0, 1.0, 1.0)
    );

    // Clones share the count, as RunningState's clones share the value.
    let clone = counter.clone();
    clone.increment();
    assert_eq!(
        counter.get(),
        2.0,
        "a clone's increment shows in the original"
    );

    // `valid()` copies: an evaluation copy never moves the training count.
    let inner = counter.valid();
    inner.increment();
    assert_eq!((counter.get(), inner.get()), (2.0, 3.0));

    // Visited as the record's [1] float tensor. A mapper that transforms
    // the value it reads (as optimizers do, returning it unchanged) leaves
    // the count; one that loads a new value sets it.
    let mut floats = Floats(Vec::new());
    counter.visit(&mut floats);
    assert_eq!(floats.0, vec![vec![2.0]]);
    let counter = counter.map(&mut Double);
    assert_eq!(counter.get(), 2.0, "a transforming mapper left the count");
    let counter = counter.map(&mut Load(7.0));
    assert_eq!(counter.get(), 7.0, "a loading mapper set the count");

    // Saturates where float32 stops counting exactly, and loads clamped.
    let near_end = HostCounter::at(COUNT_SATURATION - 1.0, &device);
    assert_eq!(near_end.increment(), COUNT_SATURATION);
    assert_eq!(near_end.increment(), COUNT_SATURATION);
    assert_eq!(HostCounter::at(-3.0, &device).get(), 0.0);
    assert_eq!(
        near_end
            .to_tensor()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        vec![16_777_216.0]
    );
}

#[test]
fn counter_names_a_record_of_the_wrong_shape() {
    let device = common::baseline();
    let record = TensorCounter {
        steps: RunningState::new(Tensor::<1>::zeros([3], &device)),
    }
    .into_record();
    let message = HostCounted {
        steps: HostCounter::new(&device),
    }
    .try_load_record(record)
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("steps") && message.contains("[1]") && message.contains("[3]"),
        "{message}"
    );
}

/// Burn-in steps are plain BatchNorm: the window's Jacobians are never
/// asked for (they are the window's largest cost) and nothing is recorded;
/// the first window step asks for them once.
fn burn_in_skips_window(device: &Device) {
    let layout = WeightLayout {
        groups: 1,
        patch_len: 2,
    };
    let norm = CrossIterBatchNormConfig::new(3)
        .with_window(3)
        .with_burn_in(2)
        .init(layout, device);
    let weight = uniform::<3>([1, 3, 2], 1, -1.0, 1.0, device);
    let jacobians_asked = std::cell::Cell::new(0);
    for step in 0..3u64 {
        let y = uniform::<4>([2, 3, 2, 2], step, -1.0, 1.0, device);
        let out = norm.forward_with(y, weight.clone(), None, || {
            jacobians_asked.set(jacobians_asked.get() + 1);
            MomentJacobians {
                mean: Tensor::zeros([1, 2], device),
                mean_sq: Tensor::zeros([3, 2], device),
            }
        });
        let _ = out.sum().backward();
        let expected = (step as usize + 1).saturating_sub(2);
        assert_eq!(
            (jacobians_asked.get(), norm.history_len(), norm.steps()),
            (expected, expected, step as usize + 1),
            "after step {step}: (Jacobians asked, history entries, steps)"
        );
    }
}

device_test!(cbn_burn_in_skips_the_window, burn_in_skips_window);

/// burn-store's snapshots (a visitor to save, a mapper to load) carry the
/// counts, as they carried the `RunningState` before; an optimizer step
/// (a mapper too) leaves them.
#[cfg(feature = "pytorch")]
#[test]
fn counter_moves_through_burn_store_and_optimizer_steps() {
    use bnorm::{BatchRenorm, BatchRenormConfig};
    use burn::optim::{GradientsParams, SgdConfig};
    use burn_store::ModuleSnapshot;

    let device = common::baseline();
    let mut trained: BatchRenorm = BatchRenormConfig::new(2).init(&device);
    let mut optim = SgdConfig::new().init();
    for step in 0..5 {
        let loss = trained.forward(uniform::<3>([2, 2, 3], step, -1.0, 1.0, &device));
        let grads = GradientsParams::from_grads(loss.sum().backward(), &trained);
        trained = optim.step(0.1, trained, grads);
    }
    assert_eq!(trained.steps(), 5, "optimizer steps kept the count");
    let snapshots = trained.collect(None, None, false);
    let mut fresh: BatchRenorm = BatchRenormConfig::new(2).init(&device);
    let result = fresh.apply(snapshots, None, None, false);
    assert_eq!(fresh.steps(), 5, "burn-store applied the count: {result:?}");
}
