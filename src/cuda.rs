//! CUDA device selection with a readable failure.

use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use burn::tensor::Tensor;

/// Returns CUDA device `index` after checking that it can run a kernel.
///
/// burn initialises the CUDA driver lazily and panics deep inside its
/// runtime when the driver library, NVRTC or the device is missing; this
/// runs one tiny kernel up front and turns such a failure into a panic that
/// says what is missing and where it was looked for.
///
/// # Panics
///
/// If the device cannot be initialised.
pub fn device_or_explain(index: usize) -> CudaDevice {
    let device = CudaDevice::new(index);
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<Cuda, 1>::ones([2], &device);
        t.sum().into_data()
    });
    if let Err(panic) = probe {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".to_string());
        panic!(
            "no usable CUDA device {index}: burn-cuda failed to initialise it ({reason}). \
             A CUDA run needs an NVIDIA GPU, the driver library libcuda.so and the runtime \
             compiler libnvrtc.so on the library path (LD_LIBRARY_PATH={}). Run the CPU \
             tests without `--features cuda` or without BNORM_DEVICE=cuda.",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        );
    }
    device
}
