//! Value-only work on a tensor's device without autodiff.
//!
//! The Jacobians of the moments are values: no gradient flows through
//! them. [`JacobianWork::run_on_inner`] computes them from tensors without
//! their autodiff association (`Tensor::inner`), so no operation of the
//! work pays autodiff's bookkeeping; the results stay on that plain device
//! and act as constants where they meet tracked tensors.

use burn::tensor::{Device, Tensor};

use crate::backend::{backend, BackendKind};
use crate::MomentJacobians;

/// Jacobian work on the values of two tensors `x`, `y` of rank `D`.
pub(crate) trait JacobianWork<const D: usize>: Copy {
    /// The work on `x` and `y` as they are.
    fn run(self, x: Tensor<D>, y: Tensor<D>) -> MomentJacobians;

    /// [`run`](Self::run) on `x` and `y` without autodiff: the result is a
    /// value, with no autodiff graph and no autodiff association.
    fn run_on_inner(self, x: Tensor<D>, y: Tensor<D>) -> MomentJacobians {
        self.run(x.inner(), y.inner())
    }
}

/// Whether a convolution's weight gradient on `device` (with or without
/// autodiff) is computed as a few matrix products on the input itself
/// (`tap_products`) rather than by the backend: on burn's CPU backends,
/// burn-ndarray and burn-flex, which take the weight gradient from burn's
/// generic decomposition into a forward convolution.
pub(crate) fn weight_gradient_by_taps(device: &Device) -> bool {
    matches!(
        backend(device),
        Some(BackendKind::NdArray | BackendKind::Flex)
    )
}

#[cfg(test)]
mod tests {
    use super::{weight_gradient_by_taps, JacobianWork};
    use crate::MomentJacobians;
    use burn::tensor::{Device, Tensor};

    /// Records whether it ran on an autodiff device.
    #[derive(Clone, Copy)]
    struct Probe;

    impl JacobianWork<2> for Probe {
        fn run(self, x: Tensor<2>, y: Tensor<2>) -> MomentJacobians {
            let on_autodiff = x.is_autodiff() as i32 as f64;
            MomentJacobians {
                mean: x.add_scalar(on_autodiff),
                mean_sq: y,
            }
        }
    }

    /// On an autodiff device the work runs without autodiff (run as it is,
    /// it would add 1) and hands back plain values.
    fn work_runs_without_autodiff(device: &Device) {
        let device = device.clone().autodiff();
        let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
        let y = Tensor::<2>::from_floats([[3.0, 4.0]], &device);
        let jacobians = Probe.run_on_inner(x.clone(), y.clone());
        assert!(!jacobians.mean.is_autodiff());
        assert_eq!(
            jacobians.mean.to_data().try_to_vec::<f32>().unwrap(),
            [1.0, 2.0]
        );
        assert_eq!(
            jacobians.mean_sq.to_data().try_to_vec::<f32>().unwrap(),
            [3.0, 4.0]
        );
        let on_autodiff = Probe.run(x, y);
        assert_eq!(
            on_autodiff.mean.to_data().try_to_vec::<f32>().unwrap(),
            [2.0, 3.0]
        );
    }

    #[test]
    #[allow(deprecated)]
    fn work_runs_without_autodiff_ndarray() {
        work_runs_without_autodiff(&Device::ndarray());
    }

    #[test]
    fn work_runs_without_autodiff_flex() {
        work_runs_without_autodiff(&Device::flex());
    }

    #[test]
    #[allow(deprecated)]
    fn cpu_backends_take_the_taps_with_and_without_autodiff() {
        assert!(weight_gradient_by_taps(&Device::ndarray()));
        assert!(weight_gradient_by_taps(&Device::ndarray().autodiff()));
        assert!(weight_gradient_by_taps(&Device::flex()));
        assert!(weight_gradient_by_taps(&Device::flex().autodiff()));
    }
}
