//! A count kept on the host and saved in the record: a layer's training
//! steps, the entries of CBN's window.
//!
//! The layers' schedules (BRN's `rmax` / `dmax`, CBN's burn-in) and which
//! of CBN's history entries hold data are functions of these counts. Held
//! on the host, the counts turn them into host scalars: a training
//! step spends no device operations on them (on a GPU each one is a kernel
//! launch; on ndarray, BatchRenorm's step at an overhead-bound size got 20%
//! faster when its schedule and counter left the device) and never waits
//! for a device read.
//!
//! The record holds the count as a `[1]` float tensor, the record of a
//! `RunningState<Tensor<1>>`, which the layers used before: checkpoints
//! written either way load either way.
//!
//! A count is of training steps, not of forward calls: the replicas of a
//! data-parallel step (burn-train's `MultiDevice`, one clone of the model
//! per device and thread, sharing this counter) each record the count
//! their step ends at, and the next step merges them into one (their
//! largest; they agree), as `AveragedState` merges tensors. After `n`
//! optimizer steps over any number of devices the count is `n`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{
    Content, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor, Param,
    ParamId,
};

use burn::tensor::{Device, Shape, Tensor, TensorData};

use crate::replica_updates::{Merge, ReplicaUpdates};

/// Where a count saturates: float32, the record's type, counts exactly up
/// to 2^24, far past the end of any schedule.
pub const COUNT_SATURATION: f64 = 16_777_216.0;

/// A count on the host, saved as a `[1]` float tensor.
///
/// Clones share the count, as clones of burn's `RunningState` share their
/// value; [`Module::valid`] and [`Module::train`] copy it. Each thread's
/// change is kept aside until the next step merges them (see the module
/// docs): [`get`](Self::get) reads the count with every change in,
/// [`local`](Self::local) the count a training step on this thread starts
/// from.
#[derive(Clone, Debug)]
pub struct HostCounter {
    id: ParamId,
    count: Arc<Mutex<ReplicaUpdates<Count>>>,
    device: Device,
}

/// A count; replicas of one step record the same one, and a merge keeps
/// the largest.
#[derive(Clone, Copy, Debug)]
struct Count(f64);

impl Merge for Count {
    fn merge(updates: Vec<Self>) -> Self {
        Count(updates.iter().map(|c| c.0).fold(f64::MIN, f64::max))
    }
}

impl HostCounter {
    /// A counter at 0 whose record tensor lives on `device`.
    pub fn new(device: &Device) -> Self {
        Self::at(0.0, device)
    }

    /// A counter at `count` (clamped to `0..=2^24`).
    pub fn at(count: f64, device: &Device) -> Self {
        Self {
            id: ParamId::new(),
            count: Arc::new(Mutex::new(ReplicaUpdates::new(Count(clamp(count))))),
            device: device.clone(),
        }
    }

    /// A counter at the value of a `[1]` tensor (one device read), as a
    /// record or a converted checkpoint holds it.
    ///
    /// # Panics
    ///
    /// If `tensor` does not hold exactly one value.
    pub fn from_tensor(tensor: Tensor<1>) -> Self {
        let device = tensor.device();
        Self::at(read_count(tensor), &device)
    }

    fn count(&self) -> MutexGuard<'_, ReplicaUpdates<Count>> {
        self.count.lock().unwrap()
    }

    /// The count, every thread's change included (merging nothing: safe to
    /// call at any time, from any thread).
    pub fn get(&self) -> f64 {
        self.count().view().0
    }

    /// The count as this thread sees it: its own latest change, or the
    /// count as of the last merge. What a training step reads: another
    /// replica's change of the same step is not seen.
    pub fn local(&self) -> f64 {
        self.count().own().0
    }

    /// Sets this thread's count (clamped to `0..=2^24`).
    pub fn set(&self, count: f64) {
        self.count().update(Count(clamp(count)));
    }

    /// Adds one to this thread's count (saturating at 2^24) and returns
    /// it: [`local`](Self::local) plus one.
    pub fn increment(&self) -> f64 {
        let mut state = self.count();
        let count = clamp(state.own().0 + 1.0);
        state.update(Count(count));
        count
    }

    /// Merges every thread's change into the count.
    fn settle(&self) -> f64 {
        let mut state = self.count();
        state.settle();
        state.view().0
    }

    /// The count as the `[1]` tensor the record holds.
    pub fn to_tensor(&self) -> Tensor<1> {
        count_tensor(self.get(), &self.device)
    }

    /// The count as a lazy `[1]` parameter for visitors and mappers: its
    /// tensor is made only if one reads it, and the flag says whether one
    /// did.
    fn lazy_param(&self) -> (Param<Tensor<1>>, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let flag = read.clone();
        let count = self.get();
        let param = Param::uninitialized(
            self.id,
            move |device, _| {
                flag.store(true, Ordering::Relaxed);
                count_tensor(count, device)
            },
            self.device.clone(),
            false,
            Shape::new([1]),
        );
        (param, read)
    }
}

fn clamp(count: f64) -> f64 {
    count.clamp(0.0, COUNT_SATURATION)
}

fn count_tensor(count: f64, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(vec![count as f32], [1]), device)
}

fn read_count(tensor: Tensor<1>) -> f64 {
    let values = tensor.dims()[0];
    assert!(
        values == 1,
        "a count is saved as a tensor of shape [1], received [{values}]"
    );
    tensor.into_scalar::<f32>() as f64
}

impl core::fmt::Display for HostCounter {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "HostCounter({})", self.get())
    }
}

impl ModuleDisplayDefault for HostCounter {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_formatted(&self.to_string()).optional()
    }
}

impl ModuleDisplay for HostCounter {}

impl Module for HostCounter {
    /// Visited as the `[1]` float tensor of the record, made only if the
    /// visitor reads it (burn's `GradientsParams::from_grads` does: one
    /// 4-byte tensor per counter and optimizer step).
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_float(&self.lazy_param().0);
    }

    /// Offered to the mapper as the record's `[1]` float tensor, made only
    /// if the mapper reads it. A mapper that returns a new tensor without
    /// reading ours (burn's record loader) sets the count from it, one
    /// device read; one that reads the tensor it is given (optimizers,
    /// `no_grad`, a transform) leaves the count as it is, so an optimizer
    /// step never waits on the device.
    ///
    /// Mappers run between steps (an optimizer step maps the whole model):
    /// the threads' changes are merged first.
    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        self.settle();
        let (param, read) = self.lazy_param();
        let mapped = mapper.map_float(param);
        if mapped.is_initialized() && !read.load(Ordering::Relaxed) {
            self.count().reset(Count(clamp(read_count(mapped.val()))));
        }
        Self {
            id: mapped.id,
            ..self
        }
    }

    fn to_device(self, device: &Device) -> Self {
        Self {
            device: device.clone(),
            ..self
        }
    }

    fn fork(self, device: &Device) -> Self {
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Vec<Device>) -> Vec<Device> {
        if !devices.contains(&self.device) {
            devices.push(self.device.clone());
        }
        devices
    }

    fn materialize(self) -> Self {
        self
    }

    /// A copy with its own count, on the device without autodiff (the
    /// shared count merged first, as `AveragedState::valid` does).
    fn valid(&self) -> Self {
        HostCounter {
            id: self.id,
            count: Arc::new(Mutex::new(ReplicaUpdates::new(Count(self.settle())))),
            device: self.device.clone().without_autodiff(),
        }
    }

    /// A copy with its own count, on the device with autodiff (the shared
    /// count merged first).
    fn train(self) -> Self {
        HostCounter {
            id: self.id,
            count: Arc::new(Mutex::new(ReplicaUpdates::new(Count(self.settle())))),
            device: self.device.clone().autodiff(),
        }
    }
}
