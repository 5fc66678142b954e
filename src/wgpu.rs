//! wgpu device selection with a readable failure.

use std::fmt;

use burn::tensor::{Device, DeviceKind};

/// Why burn-wgpu's default device cannot be used: what the calling thread
/// saw of the failure, and what a wgpu run needs.
///
/// burn-wgpu initialises its adapter on a device thread of its own; the
/// runtime's own reason (no Vulkan loader, no driver, no adapter) is the
/// panic message that thread printed to standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoWgpuDevice {
    /// The calling thread's side of the failure (typically that the
    /// device thread is gone).
    pub caller_saw: String,
}

impl fmt::Display for NoWgpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no usable wgpu device: burn-wgpu failed to initialise the default device \
             (its reason is the device thread's panic message printed above; here: {}).\n\
             A wgpu run needs a GPU driver with Vulkan, Metal or DirectX 12, or on Linux \
             without a GPU the Vulkan loader and a CPU driver (Debian: `apt-get install \
             libvulkan1 mesa-vulkan-drivers`, which brings lavapipe). Run the CPU tests \
             without `--features wgpu` or without BNORM_DEVICE=wgpu.",
            self.caller_saw
        )
    }
}

impl std::error::Error for NoWgpuDevice {}

/// burn-wgpu's default device (the adapter wgpu prefers, or the one
/// `CUBECL_WGPU_DEFAULT_DEVICE` names, e.g. `Cpu` or `DiscreteGpu(1)`),
/// checked the first time it is asked for by running one tiny kernel.
///
/// burn-wgpu picks its adapter lazily, and a missing Vulkan loader or
/// driver would otherwise surface as a closed channel at the first tensor
/// operation; this returns an error that says what a wgpu run needs. The
/// process's panic hook is not touched.
///
/// # Errors
///
/// [`NoWgpuDevice`] if no adapter can be initialised.
pub fn device() -> Result<Device, NoWgpuDevice> {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    crate::device_probe::probe(device, "wgpu:default")
        .map_err(|caller_saw| NoWgpuDevice { caller_saw })
}
