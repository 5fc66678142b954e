//! A tensor updated in the forward pass and saved in the record: burn's
//! `RunningState`, without its division by one.
//!
//! burn's `RunningState` keeps each thread's last update and, when read
//! with `value_sync`, replaces the value by their average — the semantics
//! data-parallel training needs (every device updates the same module; the
//! state is the mean of their updates). It divides by the number of
//! updates even when there is one: `x / 1`, a kernel per buffer on a GPU
//! backend, every step. CBN's history reads six buffers a step; with burn's
//! fusion that was 4 of the 66 kernels of a window-8 training step, for
//! values bit for bit the ones they started from.
//!
//! [`AveragedState`] is the same state with the same record (a float
//! [`Param`], so checkpoints load either way), the same thread semantics,
//! and one difference: a single update is taken as it is. With updates
//! from several threads it averages them exactly as `RunningState` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use burn::module::{
    AutodiffModule, Content, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param, ParamId,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// A tensor state updated during the forward pass, thread-safe; its value
/// is the average of the latest update of each thread since the last read
/// (a lone update is taken as it is, not divided by one).
///
/// Clones share the value, as clones of burn's `RunningState` do.
#[derive(Clone, Debug)]
pub struct AveragedState<B: Backend, const D: usize> {
    id: ParamId,
    /// Each thread's latest update since the value was last synced.
    updates: Arc<Mutex<HashMap<ThreadId, Tensor<B, D>>>>,
    value: Arc<Mutex<Tensor<B, D>>>,
}

impl<B: Backend, const D: usize> AveragedState<B, D> {
    /// A state holding `value`.
    pub fn new(value: Tensor<B, D>) -> Self {
        Self::with_id(ParamId::new(), value)
    }

    fn with_id(id: ParamId, value: Tensor<B, D>) -> Self {
        Self {
            id,
            updates: Arc::new(Mutex::new(HashMap::new())),
            value: Arc::new(Mutex::new(value)),
        }
    }

    /// The value as of the last sync: it does not include updates made
    /// since (see [`value_sync`](Self::value_sync)).
    pub fn value(&self) -> Tensor<B, D> {
        self.value.lock().unwrap().clone()
    }

    /// The value, with the updates made since the last sync averaged in
    /// when this thread made one (as burn's `RunningState::value_sync`:
    /// other threads' updates are not waited for).
    pub fn value_sync(&self) -> Tensor<B, D> {
        let mut updates = self.updates.lock().unwrap();
        if updates.contains_key(&std::thread::current().id()) {
            self.merge(&mut updates);
        }
        drop(updates);
        self.value()
    }

    /// Records `value` as this thread's update (a second update on the
    /// same thread first merges the pending ones, as burn's does).
    pub fn update(&self, value: Tensor<B, D>) {
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
    fn merge(&self, updates: &mut HashMap<ThreadId, Tensor<B, D>>) {
        let count = updates.len();
        let mut sum: Option<Tensor<B, D>> = None;
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

    fn param(&self) -> Param<Tensor<B, D>> {
        Param::initialized(self.id, self.value())
    }
}

impl<B: Backend, const D: usize> core::fmt::Display for AveragedState<B, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "AveragedState(id={})", self.id)
    }
}

impl<B: Backend, const D: usize> ModuleDisplayDefault for AveragedState<B, D> {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&"AveragedState".to_string())
            .optional()
    }
}

impl<B: Backend, const D: usize> ModuleDisplay for AveragedState<B, D> {}

impl<B: Backend, const D: usize> Module<B> for AveragedState<B, D> {
    /// A float parameter, as `RunningState<Tensor<B, D>>`'s record.
    type Record = Param<Tensor<B, D>>;

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        visitor.visit_float(&self.param());
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        let (id, tensor, _) = mapper.map_float(self.param()).consume();
        *self.value.lock().unwrap() = tensor;
        Self { id, ..self }
    }

    fn into_record(self) -> Self::Record {
        self.sync();
        self.param()
    }

    fn load_record(self, record: Self::Record) -> Self {
        {
            let mut value = self.value.lock().unwrap();
            *value = record.val().to_device(&value.device());
        }
        Self {
            id: record.id,
            ..self
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        {
            let mut value = self.value.lock().unwrap();
            *value = value.clone().to_device(device);
        }
        self
    }

    fn fork(self, device: &B::Device) -> Self {
        // No gradient to detach: moving is all a fork does.
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Vec<B::Device>) -> Vec<B::Device> {
        let device = self.value.lock().unwrap().device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }
}

impl<B: AutodiffBackend, const D: usize> AutodiffModule<B> for AveragedState<B, D> {
    type InnerModule = AveragedState<B::InnerBackend, D>;

    fn valid(&self) -> Self::InnerModule {
        self.sync();
        AveragedState::with_id(self.id, self.value().inner())
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        module.sync();
        AveragedState::with_id(module.id, Tensor::from_inner(module.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::module::Module;

    type B = NdArray;

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn lone_update_is_taken_as_is_and_threads_are_averaged() {
        let device = Default::default();
        let state = AveragedState::<B, 1>::new(Tensor::from_floats([1.0, 2.0], &device));
        state.update(Tensor::from_floats([3.0, 5.0], &device));
        // Not synced yet: the old value.
        assert_eq!(values(state.value()), [1.0, 2.0]);
        assert_eq!(values(state.value_sync()), [3.0, 5.0]);

        // Two threads update the same state (data-parallel training):
        // their mean, as burn's RunningState gives.
        let other = state.clone();
        std::thread::spawn(move || other.update(Tensor::from_floats([7.0, 1.0], &device)))
            .join()
            .unwrap();
        state.update(Tensor::from_floats([1.0, 4.0], &device));
        assert_eq!(values(state.value_sync()), [4.0, 2.5]);
    }

    #[test]
    fn record_is_running_states() {
        let device = Default::default();
        let state = AveragedState::<B, 1>::new(Tensor::from_floats([1.0, 2.0], &device));
        state.update(Tensor::from_floats([6.0, 8.0], &device));
        // The record syncs pending updates and is the Param a RunningState
        // record holds: it loads into one, and back.
        let record = state.clone().into_record();
        let running = burn::module::RunningState::new(Tensor::<B, 1>::zeros([2], &device))
            .load_record(record);
        assert_eq!(values(running.value_sync()), [6.0, 8.0]);
        let back = AveragedState::<B, 1>::new(Tensor::zeros([2], &device))
            .load_record(running.into_record());
        assert_eq!(values(back.value()), [6.0, 8.0]);
    }
}
