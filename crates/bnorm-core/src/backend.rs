//! Which of burn's backends a device runs on: the one place the library
//! looks behind burn's runtime dispatch, for the work it routes by backend
//! (the closed-form step's autodiff operation, a convolution's weight
//! gradient as matrix products: `tap_products`).

use burn::backend::DispatchDevice;
use burn::tensor::Device;

/// The backends the library routes work for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    NdArray,
    Flex,
    /// burn's cubecl backend (wgpu, CUDA and the other cubecl runtimes
    /// share one backend type), with the `wgpu` or the `cuda` feature.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    Cube,
}

/// The backend `device` runs on, with or without autodiff; `None` for one
/// the library does not route for.
pub(crate) fn backend(device: &Device) -> Option<BackendKind> {
    #[allow(deprecated, unreachable_patterns)]
    let backend = match device.clone().inner().as_dispatch() {
        DispatchDevice::NdArray(_) => BackendKind::NdArray,
        DispatchDevice::Flex(_) => BackendKind::Flex,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => BackendKind::Cube,
        _ => return None,
    };
    Some(backend)
}
