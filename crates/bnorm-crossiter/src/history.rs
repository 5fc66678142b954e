use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor};

use bnorm_core::{AveragedState, FrontPush, HistoryEntries, HostCounter};

use crate::WeightLayout;

/// The last `K = window - 1` iterations' statistics and their Jacobians,
/// newest first, in fixed-shape buffers so the record holds them: a
/// checkpoint resumes with the window intact.
///
/// Per entry: `mean`, `mean_sq` (`C` each), `jac_mean` (`G x F`, the patch
/// mean of each weight group), `jac_mean_sq` (`C x F`, as large as the
/// weight) and the two linearization points (`C` each): `|W| + G F + 4C`
/// floats against the reference's `3|W| + 2C` (no weight copies, see
/// `bnorm_core::jacobian`).
#[derive(Module, Debug)]
pub struct CbnHistory {
    /// `mu_i`, `[K, C]`.
    pub mean: AveragedState<2>,
    /// `nu_i`, `[K, C]`.
    pub mean_sq: AveragedState<2>,
    /// `d mu_i / dW` per group, `[K, G, F]`.
    pub jac_mean: AveragedState<3>,
    /// `d nu_i / dW` per channel, `[K, C, F]`.
    pub jac_mean_sq: AveragedState<3>,
    /// Linearization points `<d mu_i/dW, W_i> + b_i`, `[K, C]`.
    pub lin_mean: AveragedState<2>,
    /// Linearization points `<d nu_i/dW, W_i> + 2 mu_i b_i`, `[K, C]`.
    pub lin_mean_sq: AveragedState<2>,
    /// How many entries (from the front) hold data (saved as `[1]`).
    pub fill: HostCounter,
    /// The device tensors a push takes (not saved).
    #[module(skip)]
    pushes: PushTensors,
}

impl CbnHistory {
    pub(crate) fn new(
        capacity: usize,
        channels: usize,
        layout: WeightLayout,
        device: &Device,
    ) -> Self {
        let WeightLayout { groups, patch_len } = layout;
        CbnHistory {
            mean: AveragedState::new(Tensor::zeros([capacity, channels], device)),
            mean_sq: AveragedState::new(Tensor::zeros([capacity, channels], device)),
            jac_mean: AveragedState::new(Tensor::zeros([capacity, groups, patch_len], device)),
            jac_mean_sq: AveragedState::new(Tensor::zeros([capacity, channels, patch_len], device)),
            lin_mean: AveragedState::new(Tensor::zeros([capacity, channels], device)),
            lin_mean_sq: AveragedState::new(Tensor::zeros([capacity, channels], device)),
            fill: HostCounter::new(device),
            pushes: PushTensors::default(),
        }
    }

    /// Entries the buffers can hold (`window - 1`).
    pub fn capacity(&self) -> usize {
        self.mean.dims()[0]
    }

    /// The buffers as [`HistoryEntries`] (all `K`, filled or not), as this
    /// thread's training step reads them (see `AveragedState::value_sync`).
    pub fn entries(&self) -> HistoryEntries {
        self.entries_on(&self.mean.device())
    }

    /// [`entries`](Self::entries) on `device` (data-parallel replicas on
    /// several devices share the buffers: see `AveragedState::value_sync_on`).
    pub(crate) fn entries_on(&self, device: &Device) -> HistoryEntries {
        HistoryEntries {
            mean: self.mean.value_sync_on(device),
            mean_sq: self.mean_sq.value_sync_on(device),
            jac_mean: self.jac_mean.value_sync_on(device),
            jac_mean_sq: self.jac_mean_sq.value_sync_on(device),
            lin_mean: self.lin_mean.value_sync_on(device),
            lin_mean_sq: self.lin_mean_sq.value_sync_on(device),
        }
    }

    /// Pushes `entry` (one entry) to the front, dropping the oldest, and
    /// sets the number of entries holding data to `filled`.
    pub(crate) fn push(&self, entry: HistoryEntries, filled: usize) {
        let device = entry.mean.device();
        let Pushes {
            front,
            mask_per_channel,
            mask_jac_mean,
            mask_jac_mean_sq,
        } = self.pushes.on(&device, || {
            let front = FrontPush::new(self.capacity(), &device);
            Pushes {
                mask_per_channel: front.mask(self.mean.dims()),
                mask_jac_mean: front.mask(self.jac_mean.dims()),
                mask_jac_mean_sq: front.mask(self.jac_mean_sq.dims()),
                front,
            }
        });
        let update = |state: &AveragedState<2>, entry: Tensor<2>| {
            // Detached: built from the last step's buffer, the new one would
            // otherwise chain every step into burn-autodiff's bookkeeping,
            // and each step would get slower than the last.
            let buffer = state.value_sync_on(&device);
            let pushed = front.push(buffer, entry.detach(), mask_per_channel.clone());
            state.update(pushed.detach());
        };
        // The four `[K, C]` buffers one after another: one fused kernel can
        // push them all.
        update(&self.mean, entry.mean);
        update(&self.mean_sq, entry.mean_sq);
        update(&self.lin_mean, entry.lin_mean);
        update(&self.lin_mean_sq, entry.lin_mean_sq);
        let update = |state: &AveragedState<3>, entry: Tensor<3>, mask| {
            state.update(
                front
                    .push(state.value_sync_on(&device), entry.detach(), mask)
                    .detach(),
            );
        };
        update(&self.jac_mean, entry.jac_mean, mask_jac_mean);
        update(&self.jac_mean_sq, entry.jac_mean_sq, mask_jac_mean_sq);
        self.fill.set(filled as f64);
    }

    /// Entries holding data, on the host.
    pub fn len(&self) -> usize {
        self.fill.get() as usize
    }

    /// Entries holding data as this thread's training step sees them (a
    /// data-parallel replica does not see another's push of the same step).
    pub(crate) fn local_len(&self) -> usize {
        self.fill.local() as usize
    }

    /// True before the first window step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Floats the buffers hold (the memory cost of the window).
    pub fn num_floats(&self) -> usize {
        [
            self.mean.dims().iter().product::<usize>(),
            self.mean_sq.dims().iter().product::<usize>(),
            self.jac_mean.dims().iter().product::<usize>(),
            self.jac_mean_sq.dims().iter().product::<usize>(),
            self.lin_mean.dims().iter().product::<usize>(),
            self.lin_mean_sq.dims().iter().product::<usize>(),
        ]
        .iter()
        .sum()
    }
}

/// What a push takes on one device: the row shift and the front-row mask
/// of each buffer shape (see [`FrontPush`]).
#[derive(Clone)]
struct Pushes {
    front: FrontPush,
    mask_per_channel: Tensor<2, Bool>,
    mask_jac_mean: Tensor<3, Bool>,
    mask_jac_mean_sq: Tensor<3, Bool>,
}

/// [`Pushes`], made on the first push on each device and kept (not
/// saved). Made every step, they would cost uploads every step, and on a
/// fused GPU backend their creation would split the pushes into several
/// kernels. One set per device: clones of a module share this cache, and
/// with data-parallel training they push on several devices. Type-erased
/// so that the field's type does not name the backend: burn's `valid()`
/// copies it into the inference module as it is (a push never runs there).
#[derive(Clone, Default)]
struct PushTensors(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl PushTensors {
    /// The cached tensors on `device`, or `make`'s (then cached).
    fn on(&self, device: &Device, make: impl FnOnce() -> Pushes) -> Pushes {
        let mut cached = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let hit = cached
            .iter()
            .filter_map(|any| any.downcast_ref::<Pushes>())
            .find(|pushes| &pushes.front.device() == device);
        if let Some(pushes) = hit {
            return pushes.clone();
        }
        let pushes = make();
        cached.push(Box::new(pushes.clone()));
        pushes
    }
}

impl std::fmt::Debug for PushTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushTensors")
    }
}
