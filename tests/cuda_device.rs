//! `bnorm::cuda::device`: a working device, or an error that says what a
//! CUDA run needs. Built with `--features cuda` only. CI, which has no GPU,
//! runs it with `BNORM_EXPECT_NO_DEVICE=1`, which makes the error branch
//! required.
#![cfg(feature = "cuda")]

#[test]
fn cuda_device_gives_a_device_or_what_is_needed() {
    let expect_none = std::env::var_os("BNORM_EXPECT_NO_DEVICE").is_some();
    match bnorm::cuda::device(0) {
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
            assert_eq!(error.index, 0);
            let message = error.to_string();
            assert!(
                message.starts_with("no usable CUDA device 0: burn-cuda failed to initialise it"),
                "{message}"
            );
            assert!(message.contains("libcuda.so"), "{message}");
            assert!(message.contains(&error.caller_saw), "{message}");
        }
    }
}
