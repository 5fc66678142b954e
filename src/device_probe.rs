//! A GPU device checked up front, with a readable failure.
//!
//! burn's GPU backends initialise their runtime lazily, on a device thread
//! of their own, and a missing driver, library or adapter panics there; the
//! calling thread only sees the channel to that thread close. [`probe`]
//! runs one tiny kernel up front, collects the panic messages raised
//! meanwhile (on any thread, each with its thread's name) and turns such a
//! failure into one panic that gives the runtime's own reason and what a
//! run needs. The reason is the first message raised on one of cubecl's
//! device-server threads (named `DSU-...`/`DSD-...` by cubecl-common 0.10):
//! another thread may panic at the same moment for reasons of its own (a
//! test runner's other tests, which panic on purpose too).

use std::any::Any;
use std::panic::{self, PanicHookInfo};
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor};

/// What `std::panic::take_hook` returns.
type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send>;

/// The devices whose probe passed (each is probed once per process), by
/// name; the lock also keeps probes one at a time, as a probe swaps the
/// process's panic hook.
static PROBED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Returns `device` after checking, the first time `name` is asked for,
/// that it can run a kernel; panics with `explain(reason)` otherwise, where
/// `reason` is the first panic message the runtime raised.
pub(crate) fn probe(device: Device, name: &str, explain: impl FnOnce(&str) -> String) -> Device {
    let mut probed = PROBED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if probed.iter().any(|known| known == name) {
        return device;
    }
    // (thread name, message) of every panic while the probe runs.
    let raised = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    // Record every panic message while the probe runs, then hand it on to
    // the hook that was installed (output unchanged).
    let previous: Arc<PanicHook> = Arc::new(panic::take_hook());
    {
        let (raised, previous) = (raised.clone(), previous.clone());
        panic::set_hook(Box::new(move |info| {
            if let Ok(mut raised) = raised.lock() {
                raised.push((thread_name(), payload_text(info.payload())));
            }
            previous(info);
        }));
    }
    // A device handle is plain data (an index or an adapter choice).
    let probe = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let t = Tensor::<1>::ones([2], &device);
        t.sum().into_data()
    }));
    drop(panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(previous) => panic::set_hook(previous),
        Err(previous) => panic::set_hook(Box::new(move |info| previous(info))),
    }
    if probe.is_ok() {
        probed.push(name.to_string());
    }
    drop(probed);

    if let Err(panic) = probe {
        // The runtime's device thread panics with the real reason; the
        // caller's own panic (a closed channel) says only that it is gone.
        let raised = raised.lock().map(|r| r.clone()).unwrap_or_default();
        let caller = thread_name();
        let device_server = |name: &str| name.starts_with("DSU-") || name.starts_with("DSD-");
        let reason = raised
            .iter()
            .find(|(thread, _)| device_server(thread))
            // Should cubecl name its threads otherwise: any other thread's.
            .or_else(|| raised.iter().find(|(thread, _)| *thread != caller))
            .map(|(thread, message)| format!("[thread '{thread}'] {message}"))
            .unwrap_or_else(|| payload_text(&*panic));
        panic!("{}", explain(&reason));
    }
    device
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".to_string())
}
