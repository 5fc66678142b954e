//! A GPU device checked up front, with an error value instead of a panic on
//! some other thread.
//!
//! burn's GPU backends initialise their runtime lazily, on a device thread
//! of their own, and a missing driver, library or adapter panics there; the
//! calling thread only sees the channel to that thread close, at its first
//! operation. [`probe`] runs one tiny kernel up front and turns such a
//! failure into an `Err` with the caller's side of it. The process's panic
//! hook is left alone: the device thread's own message, the real reason,
//! is printed by it as for any panic.

use std::any::Any;
use std::panic;
use std::sync::Mutex;

use burn::tensor::{Device, Tensor};

/// The devices whose probe passed (each is probed once per process), by
/// name.
static PROBED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `device` after checking, the first time `name` is asked for, that it
/// can run a kernel; otherwise what the calling thread saw of the failure.
pub(crate) fn probe(device: Device, name: &str) -> Result<Device, String> {
    let mut probed = PROBED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if probed.iter().any(|known| known == name) {
        return Ok(device);
    }
    // A device handle is plain data (an index or an adapter choice).
    let probe = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let t = Tensor::<1>::ones([2], &device);
        t.sum().into_data()
    }));
    match probe {
        Ok(_) => {
            probed.push(name.to_string());
            Ok(device)
        }
        Err(panic) => Err(payload_text(&*panic)),
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".to_string())
}
