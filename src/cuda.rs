//! CUDA device selection with a readable failure.

use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;

/// Returns CUDA device `index` after checking, the first time it is asked
/// for, that it can run a kernel.
///
/// burn initialises the CUDA driver lazily, on a device thread of its own,
/// and a missing driver library, NVRTC or device panics there; the calling
/// thread only sees the channel to that thread close. This runs one tiny
/// kernel up front and turns such a failure into one panic that gives the
/// runtime's own reason and what a CUDA run needs.
///
/// # Panics
///
/// If the device cannot be initialised.
pub fn device_or_explain(index: usize) -> CudaDevice {
    crate::device_probe::probe::<Cuda>(CudaDevice::new(index), &format!("cuda:{index}"), |reason| {
        format!(
            "no usable CUDA device {index}: burn-cuda failed to initialise it: {reason}\n\
             A CUDA run needs an NVIDIA GPU, the driver library libcuda.so and the runtime \
             compiler libnvrtc.so on the library path (LD_LIBRARY_PATH={}). Run the CPU \
             tests without `--features cuda` or without BNORM_DEVICE=cuda.",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        )
    })
}
