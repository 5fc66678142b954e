//! Value-only work on a tensor's device without autodiff.
//!
//! The Jacobians of the moments are values: no gradient flows through
//! them. [`JacobianWork::run_on_inner`] computes them from tensors without
//! their autodiff association (`Tensor::inner`), so no operation of the
//! work pays autodiff's bookkeeping; the results stay on that plain device
//! and act as constants where they meet tracked tensors.

use burn::tensor::Tensor;

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

#[cfg(test)]
mod tests {
    use super::JacobianWork;
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
}
