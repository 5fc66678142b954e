//! wgpu device selection with a readable failure.

use burn::tensor::{Device, DeviceKind};

/// Returns burn-wgpu's default device (the adapter wgpu prefers, or the one
/// `CUBECL_WGPU_DEFAULT_DEVICE` names, e.g. `Cpu` or `DiscreteGpu(1)`)
/// after checking, the first time it is asked for, that it can run a
/// kernel.
///
/// burn-wgpu picks its adapter lazily, on a device thread of its own, and
/// a missing Vulkan loader or driver panics there; this runs one tiny
/// kernel up front and turns such a failure into one panic that gives the
/// runtime's own reason and what a wgpu run needs.
///
/// # Panics
///
/// If no adapter can be initialised.
pub fn device_or_explain() -> Device {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    crate::device_probe::probe(device.clone(), "wgpu:default", |reason| {
        format!(
            "no usable wgpu device: burn-wgpu failed to initialise the default device: {reason}\n\
             A wgpu run needs a GPU driver with Vulkan, Metal or DirectX 12, or on Linux \
             without a GPU the Vulkan loader and a CPU driver (Debian: `apt-get install \
             libvulkan1 mesa-vulkan-drivers`, which brings lavapipe). Run the CPU tests \
             without `--features wgpu` or without BNORM_DEVICE=wgpu."
        )
    })
}
