//! The integration tests, built as one binary (a burn-linked test binary
//! takes long to link): one module per file, named as the file. Filter by
//! module, e.g. `cargo test --test suite -- cbn_reference::`.

mod common;

#[path = "brn_properties.rs"]
mod brn_properties;
#[path = "brn_reference.rs"]
mod brn_reference;
#[path = "cbn_conv1d.rs"]
mod cbn_conv1d;
#[path = "cbn_conv3d.rs"]
mod cbn_conv3d;
#[path = "cbn_jacobians.rs"]
mod cbn_jacobians;
#[path = "cbn_properties.rs"]
mod cbn_properties;
#[path = "cbn_reference.rs"]
mod cbn_reference;
#[path = "cbn_window.rs"]
mod cbn_window;
#[path = "checkpoint_errors.rs"]
mod checkpoint_errors;
#[path = "conversions.rs"]
mod conversions;
#[path = "display.rs"]
mod display;
#[path = "exactness.rs"]
mod exactness;
#[path = "extreme.rs"]
mod extreme;
#[path = "host_counter.rs"]
mod host_counter;
#[path = "multi_device.rs"]
mod multi_device;
#[path = "non_finite.rs"]
mod non_finite;

#[path = "properties.rs"]
mod properties;

#[path = "backend_parity.rs"]
mod backend_parity;
#[cfg(feature = "cuda")]
#[path = "cuda_device.rs"]
mod cuda_device;
#[cfg(feature = "wgpu")]
#[path = "wgpu_device.rs"]
mod wgpu_device;
