//! CUDA device selection with a readable failure.

use std::fmt;

use burn::tensor::Device;

/// Why a CUDA device cannot be used: which one was asked for and what the
/// calling thread saw of the failure.
///
/// burn-cuda opens its device on a device thread of its own; the runtime's
/// own reason (no driver library, no device with that index) is the panic
/// message that thread printed to standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCudaDevice {
    /// The device index asked for.
    pub index: usize,
    /// The calling thread's side of the failure (the driver's error, or
    /// that the device thread is gone).
    pub caller_saw: String,
}

impl fmt::Display for NoCudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no usable CUDA device {}: burn-cuda failed to initialise it (its reason is \
             the device thread's panic message printed above, if any; here: {}).\n\
             A CUDA run needs an NVIDIA GPU with its driver (libcuda.so) and a device of \
             that index (`nvidia-smi -L` lists them). Without one, use `Device::flex()` \
             or build with `--features wgpu`.",
            self.index, self.caller_saw
        )
    }
}

impl std::error::Error for NoCudaDevice {}

/// burn-cuda's device `index`, checked the first time it is asked for by
/// running one tiny kernel.
///
/// burn-cuda opens the device lazily, and a missing driver or device would
/// otherwise surface as a panic at the first tensor operation, possibly on
/// another thread; this returns an error that says what a CUDA run needs.
/// The process's panic hook is not touched.
///
/// # Errors
///
/// [`NoCudaDevice`] if the device cannot be initialised.
pub fn device(index: usize) -> Result<Device, NoCudaDevice> {
    let device = Device::cuda(index);
    crate::device_probe::probe(device, &format!("cuda:{index}"))
        .map_err(|caller_saw| NoCudaDevice { index, caller_saw })
}
