//! A tensor updated in the forward pass and saved in the record: burn's
//! `RunningState`, without its division by one.
//!
//! burn's `RunningState` keeps each thread's last update and, when read
//! with `value_sync`, replaces the value by their average — the semantics
//! data-parallel training needs (every device updates the same module; the
//! state is the mean of their updates). It divides by the number of
//! updates even when there is one: `x / 1`, a kernel per buffer on a GPU
//! backend, every step, for values bit for bit the ones they started from
//! (CBN's history reads six buffers a step).
//!
//! [`AveragedState`] is the same state with the same record (a float
//! [`Param`], so checkpoints load either way) and the same thread
//! semantics, with two differences: a single update is taken as it is
//! (with updates from several threads it averages them exactly as
//! `RunningState` does), and reading the value for a record or a visitor
//! includes the pending updates without merging them, so a record taken
//! right after a step holds that step, and a replica that visits the model
//! in the middle of a data-parallel step changes nothing the others read.

use std::sync::{Arc, Mutex};

use burn::module::{
    Content, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor, Param,
    ParamId,
};
use burn::tensor::{Device, Tensor};

use crate::replica_updates::{Merge, ReplicaUpdates};

/// A tensor state updated during the forward pass, thread-safe; its value
/// is the average of the latest update of each thread since the last merge
/// (a lone update is taken as it is, not divided by one).
///
/// Clones share the value, as clones of burn's `RunningState` do: the
/// replicas of a data-parallel step each record their update, and the next
/// step reads their mean (see `replica_updates` for when updates merge).
#[derive(Clone, Debug)]
pub struct AveragedState<const D: usize> {
    id: ParamId,
    state: Arc<Mutex<ReplicaUpdates<Tensor<D>>>>,
}

/// The mean of the threads' updates: the lone one as it is, several summed
/// on the first one's device and divided by their number (burn's
/// `RunningState` order and arithmetic).
impl<const D: usize> Merge for Tensor<D> {
    fn merge(updates: Vec<Self>) -> Self {
        let count = updates.len();
        let mut updates = updates.into_iter();
        let first = updates.next().expect("a merge of at least one update");
        let device = first.device();
        let sum = updates.fold(first, |sum, update| update.to_device(&device).add(sum));
        match count {
            1 => sum,
            _ => sum.div_scalar(count as f64),
        }
    }
}

impl<const D: usize> AveragedState<D> {
    /// A state holding `value`.
    pub fn new(value: Tensor<D>) -> Self {
        Self::with_id(ParamId::new(), value)
    }

    fn with_id(id: ParamId, value: Tensor<D>) -> Self {
        Self {
            id,
            state: Arc::new(Mutex::new(ReplicaUpdates::new(value))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReplicaUpdates<Tensor<D>>> {
        self.state.lock().unwrap()
    }

    /// The value with every update made since the last merge averaged in,
    /// without merging them (what a record saves).
    pub fn value(&self) -> Tensor<D> {
        self.state().view()
    }

    /// The value this thread's training step reads: when this thread made
    /// one of the pending updates (its previous step), they are merged
    /// first; otherwise the value as of the last merge, without another
    /// replica's update of the current step (as burn's
    /// `RunningState::value_sync`).
    pub fn value_sync(&self) -> Tensor<D> {
        self.state().local()
    }

    /// [`value_sync`](Self::value_sync) on `device`. Replicas of a
    /// data-parallel step on several devices share the state, which lives
    /// where the last one forked it; moved only when it is elsewhere (as
    /// burn's `BatchNorm` moves its running statistics).
    pub fn value_sync_on(&self, device: &Device) -> Tensor<D> {
        let value = self.value_sync();
        match value.device() == *device {
            true => value,
            false => value.to_device(device),
        }
    }

    /// Records `value` as this thread's update (a second update on the
    /// same thread first merges the pending ones, as burn's does).
    pub fn update(&self, value: Tensor<D>) {
        self.state().update(value);
    }

    /// Merges every pending update into the value.
    fn sync(&self) {
        self.state().settle();
    }

    /// The record's parameter: the value with pending updates averaged in,
    /// computed only if the visitor reads it when there are several (the
    /// gradient conversion a replica runs mid-step does not).
    fn param(&self) -> Param<Tensor<D>> {
        let state = self.state();
        if state.pending() <= 1 {
            return Param::initialized(self.id, state.view());
        }
        let updates = state.pending_updates();
        let shape = updates[0].shape();
        let device = updates[0].device();
        Param::uninitialized(
            self.id,
            move |_, _| Tensor::merge(updates.clone()),
            device,
            false,
            shape,
        )
    }

    /// The value's shape (no merge needed: updates keep it).
    pub fn dims(&self) -> [usize; D] {
        self.state().own().dims()
    }

    /// The device the value lives on.
    pub fn device(&self) -> Device {
        self.state().own().device()
    }
}

impl<const D: usize> core::fmt::Display for AveragedState<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "AveragedState(id={})", self.id)
    }
}

impl<const D: usize> ModuleDisplayDefault for AveragedState<D> {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&"AveragedState".to_string())
            .optional()
    }
}

impl<const D: usize> ModuleDisplay for AveragedState<D> {}

impl<const D: usize> Module for AveragedState<D> {
    /// Visited as a float parameter, as `RunningState<Tensor<D>>` is (so
    /// records load either way), holding the pending updates averaged in:
    /// a record taken right after a forward pass holds that pass's update.
    /// Visiting merges nothing (a replica may visit mid-step).
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_float(&self.param());
    }

    /// Merges the pending updates, then maps the value (optimizers,
    /// loaders and transforms run between steps).
    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        self.sync();
        let (id, tensor, _) = mapper.map_float(self.param()).consume();
        // A buffer, not an optimizer target: never one that requires grad.
        self.state().reset(tensor.set_require_grad(false));
        Self { id, ..self }
    }

    fn to_device(self, device: &Device) -> Self {
        self.state().map_value(|value| value.to_device(device));
        self
    }

    fn fork(self, device: &Device) -> Self {
        // No gradient to detach: moving is all a fork does.
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Vec<Device>) -> Vec<Device> {
        let device = self.device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn materialize(self) -> Self {
        self
    }

    /// A copy without autodiff, its own value (as `RunningState::valid`),
    /// after merging the pending updates.
    fn valid(&self) -> Self {
        self.sync();
        AveragedState::with_id(self.id, self.value().without_autodiff())
    }

    fn train(self) -> Self {
        self.sync();
        AveragedState::with_id(self.id, Tensor::from_inner(self.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn lone_update_is_taken_as_is_and_threads_are_averaged() {
        let device = Device::flex();
        let state = AveragedState::<1>::new(Tensor::from_floats([1.0, 2.0], &device));
        state.update(Tensor::from_floats([3.0, 5.0], &device));
        assert_eq!(values(state.value()), [3.0, 5.0]);
        assert_eq!(values(state.value_sync()), [3.0, 5.0]);

        // Two threads update the same state (data-parallel training):
        // their mean, as burn's RunningState gives.
        let other = state.clone();
        let other_device = device.clone();
        std::thread::spawn(move || other.update(Tensor::from_floats([7.0, 1.0], &other_device)))
            .join()
            .unwrap();
        state.update(Tensor::from_floats([1.0, 4.0], &device));
        assert_eq!(values(state.value_sync()), [4.0, 2.5]);
    }

    #[test]
    fn a_replica_reads_the_last_merge_until_its_own_update_merges() {
        let device = Device::flex();
        let state = AveragedState::<1>::new(Tensor::from_floats([1.0, 1.0], &device));
        let replica = |state: &AveragedState<1>, value: [f32; 2]| {
            let (state, device) = (state.clone(), device.clone());
            std::thread::spawn(move || {
                let read = values(state.value_sync());
                state.update(Tensor::from_floats(value, &device));
                // A visit mid-step (burn's gradient conversion) merges nothing.
                let _ = state.clone().into_record();
                read
            })
        };
        // One step: the first replica's update stays pending while the
        // second reads, so both read the value the step started from.
        let first = replica(&state, [3.0, 5.0]).join().unwrap();
        let second = replica(&state, [5.0, 9.0]).join().unwrap();
        assert_eq!((first, second), (vec![1.0, 1.0], vec![1.0, 1.0]));
        // Between steps: the mean of the two updates, without merging.
        assert_eq!(values(state.value()), [4.0, 7.0]);
        state.sync();
        assert_eq!(values(state.value_sync()), [4.0, 7.0]);
    }

    #[test]
    fn record_is_running_states() {
        let device = Device::flex();
        let state = AveragedState::<1>::new(Tensor::from_floats([1.0, 2.0], &device));
        state.update(Tensor::from_floats([6.0, 8.0], &device));
        // The record holds pending updates and is the Param a RunningState
        // record holds: it loads into one, and back.
        let record = state.clone().into_record();
        let running =
            burn::module::RunningState::new(Tensor::<1>::zeros([2], &device)).load_record(record);
        assert_eq!(values(running.value_sync()), [6.0, 8.0]);
        let back =
            AveragedState::<1>::new(Tensor::zeros([2], &device)).load_record(running.into_record());
        assert_eq!(values(back.value()), [6.0, 8.0]);
    }
}
