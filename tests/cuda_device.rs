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

/// An upstream check, not of this library: on wgpu (lavapipe), burn-cubecl
/// 0.21 returns a wrong convolution input gradient when the stride is
/// longer than the kernel (all zeros for a 1x1 conv with stride 2; see
/// docs/gpu.md). Every CBN block takes its input gradient from burn's
/// convolution, so whether CUDA shares the bug decides whether such
/// convolutions train there. burn's `conv2d` input gradient on CUDA
/// against ndarray's (`check_matmul`: TF32), for a 1x1 kernel with stride
/// 2 and a 3x3 kernel with stride 4.
#[test]
fn burn_conv_input_gradient_with_stride_beyond_kernel() {
    use crate::common::random::uniform;
    use crate::common::{check_matmul, CudaAd, NdArrayAd};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    fn input_gradient<B: AutodiffBackend>(
        device: &B::Device,
        (size, kernel, stride, padding): (usize, usize, usize, usize),
    ) -> burn::tensor::TensorData {
        let x = uniform::<B, 4>([2, 2, size, size], 1, -1.0, 1.0, device).require_grad();
        let w = uniform::<B, 4>([3, 2, kernel, kernel], 2, -1.0, 1.0, device);
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        let y = conv2d(x.clone(), w, None, options);
        let g = uniform::<B, 4>(y.dims(), 3, -1.0, 1.0, device);
        let grads = y.mul(g).sum().backward();
        x.grad(&grads).unwrap().into_data()
    }
    let device = bnorm::cuda::device_or_explain(0);
    for case in [(8, 1, 2, 0), (9, 3, 4, 1)] {
        let expected = input_gradient::<NdArrayAd>(&Default::default(), case);
        let shape = expected.shape.to_vec();
        check_matmul::<CudaAd>(
            &format!("conv2d input gradient, (size, kernel, stride, padding) = {case:?}"),
            &input_gradient::<CudaAd>(&device, case),
            &shape,
            &expected.try_to_vec::<f32>().unwrap(),
        )
        .unwrap();
    }
}
