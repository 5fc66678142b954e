//! `bnorm::cuda::device`: a working device, or an error that says what a
//! CUDA run needs. Built with `--features cuda` only. CI, which has no GPU,
//! runs it with `BNORM_EXPECT_NO_DEVICE=1`, which makes the error branch
//! required.
#![cfg(feature = "cuda")]

use crate::common::check_device_probe;

#[test]
fn cuda_device_gives_a_device_or_what_is_needed() {
    check_device_probe(
        bnorm::cuda::device(0),
        |error| {
            assert_eq!(error.index, 0);
            error.caller_saw.clone()
        },
        "no usable CUDA device 0: burn-cuda failed to initialise it",
        "libcuda.so",
    );
}
