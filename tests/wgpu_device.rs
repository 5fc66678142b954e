//! `bnorm::wgpu::device_or_explain`: a working device, or one panic that
//! gives the runtime's own reason. Built with `--features wgpu` only. CI
//! also runs it with `VK_ICD_FILENAMES` pointing at no driver and
//! `BNORM_EXPECT_NO_DEVICE=1`, which makes the failure branch required.
#![cfg(feature = "wgpu")]

use crate::common::check_device_or_explain;

#[test]
fn wgpu_device_or_explain_gives_a_device_or_the_reason() {
    check_device_or_explain(
        bnorm::wgpu::device_or_explain,
        "no usable wgpu device: burn-wgpu failed to initialise the default device: ",
        "mesa-vulkan-drivers",
    );
}
