//! The devices test bodies run on: ndarray and flex always, wgpu with
//! `--features wgpu`, CUDA with `--features cuda`. A test body is a plain
//! function of an autodiff [`Device`]; [`on_device!`] calls it for a
//! [`TestDevice`] case.

use burn::tensor::Device;

/// One backend a test case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDevice {
    /// burn-ndarray (the design card's CPU reference; deprecated by burn).
    NdArray,
    /// burn-flex (burn's recommended CPU backend).
    Flex,
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// burn-cuda's device 0 (run where a GPU is: the GPU test pack).
    #[cfg(feature = "cuda")]
    Cuda,
}

impl TestDevice {
    /// The device a single-device test uses: `BNORM_DEVICE=flex` selects
    /// flex, `BNORM_DEVICE=wgpu` wgpu (with the `wgpu` feature),
    /// `BNORM_DEVICE=cuda` CUDA (with the `cuda` feature), anything else
    /// ndarray.
    pub fn from_env() -> Self {
        match std::env::var("BNORM_DEVICE").as_deref() {
            Ok("flex") => TestDevice::Flex,
            #[cfg(feature = "wgpu")]
            Ok("wgpu") => TestDevice::Wgpu,
            #[cfg(feature = "cuda")]
            Ok("cuda") => TestDevice::Cuda,
            // Reached for a backend whose feature is off.
            #[allow(unreachable_patterns)]
            Ok(name @ ("wgpu" | "cuda")) => panic!(
                "BNORM_DEVICE={name} but the tests were built without the `{name}` feature; \
                 rebuild with `--features {name}`"
            ),
            _ => TestDevice::NdArray,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TestDevice::NdArray => "ndarray",
            TestDevice::Flex => "flex",
            #[cfg(feature = "wgpu")]
            TestDevice::Wgpu => "wgpu",
            #[cfg(feature = "cuda")]
            TestDevice::Cuda => "cuda",
        }
    }

    /// The device without autodiff.
    pub fn plain(self) -> Device {
        match self {
            #[allow(deprecated)]
            TestDevice::NdArray => Device::ndarray(),
            TestDevice::Flex => Device::flex(),
            #[cfg(feature = "wgpu")]
            TestDevice::Wgpu => wgpu_device(),
            #[cfg(feature = "cuda")]
            TestDevice::Cuda => cuda_device(),
        }
    }

    /// The device with autodiff, as the test bodies take it.
    pub fn autodiff(self) -> Device {
        self.plain().autodiff()
    }

    /// Whether the backend runs on a GPU runtime (a test then waits for it
    /// before returning, see [`on_device!`]).
    pub fn is_gpu(self) -> bool {
        matches!(self.name(), "wgpu" | "cuda")
    }
}

/// The CPU autodiff device tests compare against (ndarray).
pub fn baseline() -> Device {
    TestDevice::NdArray.autodiff()
}

/// burn-wgpu's default device, with a clear message when there is none.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Device {
    bnorm::wgpu::device().unwrap_or_else(|e| panic!("{e}"))
}

/// burn-cuda's device 0, with a clear message when there is none.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Device {
    bnorm::cuda::device(0).unwrap_or_else(|e| panic!("{e}"))
}

/// Calls the test body `$body(&device, args...)` on the autodiff device of
/// the [`TestDevice`] `$dev`; on a GPU it then waits for the device to
/// finish, so that no test returns with kernels still compiling or queued
/// on the device's server thread, where a process exit would race the
/// driver's teardown.
macro_rules! on_device {
    ($dev:expr, $body:ident $(, $arg:expr)* $(,)?) => {{
        let test_device: $crate::common::TestDevice = $dev;
        let device = test_device.autodiff();
        let result = $body(&device $(, $arg)*);
        if test_device.is_gpu() {
            $crate::common::sync_device(&device);
        }
        result
    }};
}
pub(crate) use on_device;

/// One test `$name` per device: ndarray, flex and, with their features,
/// wgpu and CUDA (rstest cases `case_1_ndarray`, `case_2_flex`,
/// `case_3_wgpu`, `case_4_cuda`; without wgpu, CUDA's is `case_3_cuda`),
/// each running `$body(&device)` through [`on_device!`].
macro_rules! device_test {
    ($name:ident, $body:ident) => {
        #[rstest::rstest]
        #[case::ndarray($crate::common::TestDevice::NdArray)]
        #[case::flex($crate::common::TestDevice::Flex)]
        #[cfg_attr(feature = "wgpu", case::wgpu($crate::common::TestDevice::Wgpu))]
        #[cfg_attr(feature = "cuda", case::cuda($crate::common::TestDevice::Cuda))]
        fn $name(#[case] dev: $crate::common::TestDevice) {
            $crate::common::on_device!(dev, $body);
        }
    };
}
pub(crate) use device_test;

/// Waits for every operation queued on `device` (see [`on_device!`]).
pub fn sync_device(device: &Device) {
    device
        .sync()
        .unwrap_or_else(|e| panic!("the device failed while finishing the test: {e:?}"));
}

/// Checks a GPU device probe's answer (`bnorm::wgpu::device`,
/// `bnorm::cuda::device`): a device that sums `[1, 2, 4]` to 7, or an error
/// whose message starts with `prefix`, names `needed` and carries what the
/// calling thread saw (`caller_saw`). With `BNORM_EXPECT_NO_DEVICE` set
/// (CI, which has no GPU and hides lavapipe for this check) the error is
/// required.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn check_device_probe<E: std::fmt::Display>(
    probe: Result<Device, E>,
    caller_saw: impl FnOnce(&E) -> String,
    prefix: &str,
    needed: &str,
) {
    let expect_none = std::env::var_os("BNORM_EXPECT_NO_DEVICE").is_some();
    match probe {
        Ok(device) if expect_none => {
            panic!("BNORM_EXPECT_NO_DEVICE is set, but a device came: {device:?}")
        }
        Ok(device) => {
            let sum: f32 = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0, 4.0], &device)
                .sum()
                .into_scalar();
            assert_eq!(sum, 7.0);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with(prefix), "{message}");
            assert!(message.contains(needed), "{message}");
            assert!(message.contains(&caller_saw(&error)), "{message}");
        }
    }
}
