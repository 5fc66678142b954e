//! `bnorm::wgpu::device`: a working device, or an error that says what a
//! wgpu run needs. Built with `--features wgpu` only. CI also runs it with
//! `VK_ICD_FILENAMES` pointing at no driver and `BNORM_EXPECT_NO_DEVICE=1`,
//! which makes the error branch required.
#![cfg(feature = "wgpu")]

#[test]
fn wgpu_device_gives_a_device_or_what_is_needed() {
    let expect_none = std::env::var_os("BNORM_EXPECT_NO_DEVICE").is_some();
    match bnorm::wgpu::device() {
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
            assert!(
                message.starts_with(
                    "no usable wgpu device: burn-wgpu failed to initialise the default device"
                ),
                "{message}"
            );
            assert!(message.contains("mesa-vulkan-drivers"), "{message}");
            assert!(message.contains(&error.caller_saw), "{message}");
        }
    }
}
