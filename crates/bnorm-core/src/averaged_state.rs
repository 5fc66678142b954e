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
//! [`Param`], so checkpoints load either way), the same thread semantics,
//! and one difference: a single update is taken as it is. With updates
//! from several threads it averages them exactly as `RunningState` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use burn::module::{
    Content, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor, Param,
    ParamId,
};
use burn::tensor::{Device, Tensor};

/// A tensor state updated during the forward pass, thread-safe; its value
/// is the average of the latest update of each thread since the last read
/// (a lone update is taken as it is, not divided by one).
///
/// Clones share the value, as clones of burn's `RunningState` do.
#[derive(Clone, Debug)]
pub struct AveragedState<const D: usize> {
    id: ParamId,
    /// Each thread's latest update since the value was last synced.
    updates: Arc<Mutex<HashMap<ThreadId, Tensor<D>>>>,
    value: Arc<Mutex<Tensor<D>>>,
}

impl<const D: usize> AveragedState<D> {
    /// A state holding `value`.
    pub fn new(value: Tensor<D>) -> Self {
        Self::with_id(ParamId::new(), value)
    }

    fn with_id(id: ParamId, value: Tensor<D>) -> Self {
        Self {
            id,
            updates: Arc::new(Mutex::new(HashMap::new())),
            value: Arc::new(Mutex::new(value)),
        }
    }

    /// The value as of the last sync: it does not include updates made
    /// since (see [`value_sync`](Self::value_sync)).
    pub fn value(&self) -> Tensor<D> {
        self.value.lock().unwrap().clone()
    }

    /// The value, with the updates made since the last sync averaged in
    /// when this thread made one (as burn's `RunningState::value_sync`:
    /// other threads' updates are not waited for).
    pub fn value_sync(&self) -> Tensor<D> {
        let mut updates = self.updates.lock().unwrap();
        if updates.contains_key(&std::thread::current().id()) {
            self.merge(&mut updates);
        }
        drop(updates);
        self.value()
    }

    /// Records `value` as this thread's update (a second update on the
    /// same thread first merges the pending ones, as burn's does).
    pub fn update(&self, value: Tensor<D>) {
        let thread = std::thread::current().id();
        let mut updates = self.updates.lock().unwrap();
        if updates.contains_key(&thread) {
            self.merge(&mut updates);
        }
        updates.insert(thread, value);
    }

    /// Merges every pending update into the value.
    fn sync(&self) {
        let mut updates = self.updates.lock().unwrap();
        if !updates.is_empty() {
            self.merge(&mut updates);
        }
    }

    /// The value becomes the mean of the pending updates: the lone one as
    /// it is, several summed on the first one's device and divided by
    /// their number (burn's order and arithmetic).
    fn merge(&self, updates: &mut HashMap<ThreadId, Tensor<D>>) {
        let count = updates.len();
        let mut sum: Option<Tensor<D>> = None;
        for (_, tensor) in updates.drain() {
            sum = Some(match sum {
                Some(current) => {
                    let device = current.device();
                    tensor.to_device(&device).add(current)
                }
                None => tensor,
            });
        }
        if let Some(sum) = sum {
            let merged = if count == 1 {
                sum
            } else {
                sum.div_scalar(count as f64)
            };
            *self.value.lock().unwrap() = merged;
        }
    }

    fn param(&self) -> Param<Tensor<D>> {
        Param::initialized(self.id, self.value())
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
    /// records load either way), after merging pending updates: a record
    /// taken right after a forward pass holds that pass's update.
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.sync();
        visitor.visit_float(&self.param());
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        self.sync();
        let (id, tensor, _) = mapper.map_float(self.param()).consume();
        // A buffer, not an optimizer target: never one that requires grad.
        *self.value.lock().unwrap() = tensor.set_require_grad(false);
        Self { id, ..self }
    }

    fn to_device(self, device: &Device) -> Self {
        {
            let mut value = self.value.lock().unwrap();
            *value = value.clone().to_device(device);
        }
        self
    }

    fn fork(self, device: &Device) -> Self {
        // No gradient to detach: moving is all a fork does.
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Vec<Device>) -> Vec<Device> {
        let device = self.value.lock().unwrap().device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn materialize(self) -> Self {
        self
    }

    /// A copy without autodiff, its own value (as `RunningState::valid`).
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
        // Not synced yet: the old value.
        assert_eq!(values(state.value()), [1.0, 2.0]);
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
    fn record_is_running_states() {
        let device = Device::flex();
        let state = AveragedState::<1>::new(Tensor::from_floats([1.0, 2.0], &device));
        state.update(Tensor::from_floats([6.0, 8.0], &device));
        // The record syncs pending updates and is the Param a RunningState
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
