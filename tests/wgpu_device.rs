//! `bnorm::wgpu::device_or_explain`: a working device, or one panic that
//! gives the runtime's own reason. Built with `--features wgpu` only. CI
//! also runs it with `VK_ICD_FILENAMES` pointing at no driver and
//! `BNORM_EXPECT_NO_DEVICE=1`, which makes the failure branch required.
#![cfg(feature = "wgpu")]

use burn::backend::Wgpu;
use burn::tensor::Tensor;

#[test]
fn wgpu_device_or_explain_gives_a_device_or_the_reason() {
    let expect_none = std::env::var_os("BNORM_EXPECT_NO_DEVICE").is_some();
    match std::panic::catch_unwind(bnorm::wgpu::device_or_explain) {
        Ok(_) if expect_none => panic!("BNORM_EXPECT_NO_DEVICE is set, but a device came"),
        Ok(device) => {
            let sum: f32 = Tensor::<Wgpu, 1>::from_floats([1.0, 2.0, 4.0], &device)
                .sum()
                .into_scalar();
            assert_eq!(sum, 7.0);
        }
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                message.starts_with(
                    "no usable wgpu device: burn-wgpu failed to initialise DefaultDevice: "
                ),
                "{message}"
            );
            assert!(!message.contains("RecvError"), "{message}");
            assert!(message.contains("mesa-vulkan-drivers"), "{message}");
        }
    }
}
