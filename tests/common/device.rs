//! The devices test bodies run on: ndarray always, CUDA with `--features
//! cuda`, wgpu with `--features wgpu`. Test bodies are generic functions
//! over an autodiff backend; the [`on_device!`] macro instantiates one for
//! a [`TestDevice`] case.

/// One backend a test case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDevice {
    NdArray,
    #[cfg(feature = "cuda")]
    Cuda,
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl TestDevice {
    /// The device a single-device test uses: `BNORM_DEVICE=cuda` selects
    /// CUDA (with the `cuda` feature), `BNORM_DEVICE=wgpu` wgpu (with the
    /// `wgpu` feature), anything else ndarray.
    pub fn from_env() -> Self {
        match std::env::var("BNORM_DEVICE").as_deref() {
            #[cfg(feature = "cuda")]
            Ok("cuda") => TestDevice::Cuda,
            #[cfg(feature = "wgpu")]
            Ok("wgpu") => TestDevice::Wgpu,
            // Reached for a backend whose feature is off.
            #[allow(unreachable_patterns)]
            Ok(name @ ("cuda" | "wgpu")) => panic!(
                "BNORM_DEVICE={name} but the tests were built without the `{name}` feature; \
                 rebuild with `--features {name}`"
            ),
            _ => TestDevice::NdArray,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TestDevice::NdArray => "ndarray",
            #[cfg(feature = "cuda")]
            TestDevice::Cuda => "cuda",
            #[cfg(feature = "wgpu")]
            TestDevice::Wgpu => "wgpu",
        }
    }
}

#[cfg(feature = "cuda")]
pub type CudaAd = burn::backend::Autodiff<burn::backend::Cuda>;

/// The first CUDA device, with a clear message when there is none.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> burn::backend::cuda::CudaDevice {
    bnorm::cuda::device_or_explain(0)
}

#[cfg(feature = "wgpu")]
pub type WgpuAd = burn::backend::Autodiff<burn::backend::Wgpu>;

/// burn-wgpu's default device, with a clear message when there is none.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> burn::backend::wgpu::WgpuDevice {
    bnorm::wgpu::device_or_explain()
}

/// Calls the generic test body `$body::<B>(&device, args...)` on the backend
/// of the [`TestDevice`] `$dev`; on a GPU it then waits for the device to
/// finish (`Backend::sync`), so that no test returns with kernels still
/// compiling or queued on the device's server thread, where a process exit
/// would race the driver's teardown. (One H100 run had a test print `ok`
/// and its process still fail, with no message; its cause was not found,
/// and the test passed in the three later runs and three repetitions.)
macro_rules! on_device {
    // A GPU backend `$B` on `$device`: the body, then the wait.
    (@gpu $B:ty, $device:expr, $body:ident $(, $arg:expr)*) => {{
        let device = $device;
        let result = $body::<$B>(&device $(, $arg)*);
        $crate::common::sync_device::<$B>(&device);
        result
    }};
    ($dev:expr, $body:ident $(, $arg:expr)* $(,)?) => {
        match $dev {
            $crate::common::TestDevice::NdArray => {
                $body::<$crate::common::NdArrayAd>(&Default::default() $(, $arg)*)
            }
            #[cfg(feature = "cuda")]
            $crate::common::TestDevice::Cuda => $crate::common::on_device!(
                @gpu $crate::common::CudaAd, $crate::common::cuda_device(), $body $(, $arg)*
            ),
            #[cfg(feature = "wgpu")]
            $crate::common::TestDevice::Wgpu => $crate::common::on_device!(
                @gpu $crate::common::WgpuAd, $crate::common::wgpu_device(), $body $(, $arg)*
            ),
        }
    };
}
pub(crate) use on_device;

/// Waits for every operation queued on `device` (see [`on_device!`]).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn sync_device<B: burn::tensor::backend::Backend>(device: &B::Device) {
    B::sync(device).unwrap_or_else(|e| panic!("the device failed while finishing the test: {e:?}"));
}

/// Checks a `device_or_explain`: either a device that sums `[1, 2, 4]` to 7,
/// or one panic that starts with `prefix`, carries the runtime's own reason
/// (raised on its device thread; the caller's thread only sees a channel
/// close, `RecvError`) and names `needed`. With `BNORM_EXPECT_NO_DEVICE`
/// set, the panic is required.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn check_device_or_explain<B: burn::tensor::backend::Backend>(
    device_or_explain: impl FnOnce() -> B::Device + std::panic::UnwindSafe,
    prefix: &str,
    needed: &str,
) {
    let expect_none = std::env::var_os("BNORM_EXPECT_NO_DEVICE").is_some();
    match std::panic::catch_unwind(device_or_explain) {
        Ok(_) if expect_none => panic!("BNORM_EXPECT_NO_DEVICE is set, but a device came"),
        Ok(device) => {
            use burn::tensor::ElementConversion;
            let sum: f32 = burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0, 4.0], &device)
                .sum()
                .into_scalar()
                .elem();
            assert_eq!(sum, 7.0);
        }
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.starts_with(prefix), "{message}");
            assert!(!message.contains("RecvError"), "{message}");
            // From cubecl's device-server thread, not from another test
            // panicking (on purpose) at the same moment.
            assert!(
                message[prefix.len()..].starts_with("[thread 'DS"),
                "{message}"
            );
            assert!(message.contains(needed), "{message}");
        }
    }
}
