//! `bnorm::wgpu::device`: a working device, or an error that says what a
//! wgpu run needs. Built with `--features wgpu` only. CI also runs it with
//! `VK_ICD_FILENAMES` pointing at no driver and `BNORM_EXPECT_NO_DEVICE=1`,
//! which makes the error branch required.
#![cfg(feature = "wgpu")]

use crate::common::check_device_probe;

#[test]
fn wgpu_device_gives_a_device_or_what_is_needed() {
    check_device_probe(
        bnorm::wgpu::device(),
        |error| error.caller_saw.clone(),
        "no usable wgpu device: burn-wgpu failed to initialise the default device",
        "mesa-vulkan-drivers",
    );
}
