//! `bnorm::cuda::device_or_explain`: a working device, or one panic that
//! gives the runtime's own reason. Built with `--features cuda` only; on a
//! machine without a GPU or driver the second branch is what runs.
#![cfg(feature = "cuda")]

use crate::common::check_device_or_explain;
use burn::backend::Cuda;

#[test]
fn device_or_explain_gives_a_device_or_the_reason() {
    check_device_or_explain::<Cuda>(
        || bnorm::cuda::device_or_explain(0),
        "no usable CUDA device 0: burn-cuda failed to initialise it: ",
        "libnvrtc.so",
    );
}

/// `cubecl.toml` at the repository root keeps compiled kernels and autotune
/// results under `target/` (a malformed file would panic every CUDA run,
/// so parse it here, where no device is needed).
#[test]
fn kernel_caches_are_kept_under_target() {
    use burn::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    let config = CubeClRuntimeConfig::get();
    // Tests run in the package directory, under cargo and the GPU pack alike.
    let root = std::env::current_dir().unwrap().join("target");
    match &config.compilation.cache {
        Some(cache @ CacheConfig::Target) => assert_eq!(cache.root(), root),
        other => panic!("compiled kernels: expected the target cache, got {other:?}"),
    }
    assert_eq!(config.autotune.cache.root(), root, "autotune results");
}
