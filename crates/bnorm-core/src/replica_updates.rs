//! A value shared by a module's clones and updated by the threads that
//! run them: burn's `RunningState` semantics, for tensors and host counts.
//!
//! Data-parallel training (burn-train's `MultiDevice` strategy) gives each
//! device a clone of the model on its own thread; clones share their state,
//! so every replica updates the same value in the same step. Each thread's
//! update is kept aside (*pending*) until the next step, when the first
//! thread to update or read again merges them: the value every replica
//! then reads is the merge of the last step's updates (their mean for
//! tensors, their largest for counts). Inside a step, a thread that has
//! not updated yet reads the merged value of the previous step, never
//! another replica's update of this step.
//!
//! Nothing that only reads mutates: [`view`](ReplicaUpdates::view) gives
//! the value a merge would produce without merging, so a visitor running
//! on one replica in the middle of a step (burn's `GradientsParams`
//! conversion does) cannot merge one replica's update early.

use std::collections::HashMap;
use std::thread::ThreadId;

/// How a value and its pending updates combine.
pub(crate) trait Merge: Clone {
    /// The merge of `updates` (never empty), in any order.
    fn merge(updates: Vec<Self>) -> Self;
}

/// The value and each thread's pending update.
#[derive(Debug)]
pub(crate) struct ReplicaUpdates<V> {
    value: V,
    pending: HashMap<ThreadId, V>,
}

fn this_thread() -> ThreadId {
    std::thread::current().id()
}

impl<V: Merge> ReplicaUpdates<V> {
    pub(crate) fn new(value: V) -> Self {
        Self {
            value,
            pending: HashMap::new(),
        }
    }

    /// The value as this thread's next step sees it: the merge of the
    /// last step's updates when this thread made one of them (merging
    /// them now), else the value as of the last merge.
    pub(crate) fn local(&mut self) -> V {
        if self.pending.contains_key(&this_thread()) {
            self.settle();
        }
        self.value.clone()
    }

    /// This thread's own pending update, else the value as of the last
    /// merge; merges nothing (for counts, whose replicas agree).
    pub(crate) fn own(&self) -> V {
        self.pending
            .get(&this_thread())
            .unwrap_or(&self.value)
            .clone()
    }

    /// Records `value` as this thread's update. A thread that updates a
    /// second time first merges the pending updates (its earlier one is
    /// of an earlier step).
    pub(crate) fn update(&mut self, value: V) {
        if self.pending.contains_key(&this_thread()) {
            self.settle();
        }
        self.pending.insert(this_thread(), value);
    }

    /// Merges every pending update into the value.
    pub(crate) fn settle(&mut self) {
        if !self.pending.is_empty() {
            self.value = V::merge(self.pending.drain().map(|(_, v)| v).collect());
        }
    }

    /// The value a merge would give now, without merging.
    pub(crate) fn view(&self) -> V {
        match self.pending.len() {
            0 => self.value.clone(),
            _ => V::merge(self.pending.values().cloned().collect()),
        }
    }

    /// The pending updates, in no particular order.
    pub(crate) fn pending_updates(&self) -> Vec<V> {
        self.pending.values().cloned().collect()
    }

    /// How many updates are pending.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Replaces the value and drops the pending updates (a loaded record).
    pub(crate) fn reset(&mut self, value: V) {
        self.pending.clear();
        self.value = value;
    }

    /// Applies `f` to the value in place (a device move).
    pub(crate) fn map_value(&mut self, f: impl FnOnce(V) -> V) {
        self.value = f(self.value.clone());
    }
}
