//! Value-only work on an autodiff backend's inner backend.
//!
//! The layers are generic over `B: Backend`: one `forward` trains on
//! `Autodiff<I>` and infers on `I`, so it cannot name `I`. The Jacobians of
//! the moments are computed from detached tensors, as values, and they run
//! better on `I` itself:
//!
//! - burn-autodiff does not override `conv2d_weight_backward` (it calls the
//!   inner backend's from its own convolution backward only), so on
//!   `Autodiff<I>` the trait's default decomposition runs: a forward
//!   convolution with the output gradient as an `Ho x Wo` kernel, a GEMM
//!   with a tiny output and a huge reduction. burn-cubecl's own
//!   implementation autotunes between that and implicit-GEMM
//!   weight-gradient kernels; burn's `Conv2d` backward gets those.
//! - Every operation on `Autodiff<I>` pays autodiff's bookkeeping, also on
//!   untracked tensors.
//!
//! [`JacobianWork::run_on_inner`] runs the work on `I` when `B` is
//! `Autodiff<I>` for an `I` this build can name — burn-ndarray's `NdArray`
//! and, with the `cuda` and `wgpu` features, burn-cuda's `Cuda` and
//! burn-wgpu's `Wgpu`, each with its default element types, under either
//! of burn-autodiff's checkpointing strategies — found by `TypeId` through
//! `Any`, and runs the same math on `B` otherwise (other backends, other
//! element types: correct, without these two savings).

use core::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Tensor};

use crate::MomentJacobians;

/// Jacobian work on the values of two tensors `x`, `y` of rank `D`,
/// written once for any backend.
pub(crate) trait JacobianWork<const D: usize>: Copy {
    /// The work on backend `E`.
    fn run<E: Backend>(self, x: Tensor<E, D>, y: Tensor<E, D>) -> MomentJacobians<E>;

    /// [`run`](Self::run) on the inner backend of `B` where this build can
    /// name it (see the module docs), else on `B` with `x`, `y` detached:
    /// the result is a value, with no autodiff graph, either way.
    fn run_on_inner<B: Backend>(self, x: Tensor<B, D>, y: Tensor<B, D>) -> MomentJacobians<B> {
        let (x, y) = match on_inner::<B, burn::backend::NdArray, D>(x, y, self) {
            Ok(jacobians) => return jacobians,
            Err(values) => values,
        };
        #[cfg(feature = "cuda")]
        let (x, y) = match on_inner::<B, burn::backend::Cuda, D>(x, y, self) {
            Ok(jacobians) => return jacobians,
            Err(values) => values,
        };
        #[cfg(feature = "wgpu")]
        let (x, y) = match on_inner::<B, burn::backend::Wgpu, D>(x, y, self) {
            Ok(jacobians) => return jacobians,
            Err(values) => values,
        };
        self.run(x.detach(), y.detach())
    }
}

/// `work` on `I` when `B` is `Autodiff<I, C>` for either checkpointing
/// strategy `C`, with the result as untracked `B` tensors; `(x, y)` back
/// otherwise.
fn on_inner<B: Backend, I: Backend, const D: usize>(
    x: Tensor<B, D>,
    y: Tensor<B, D>,
    work: impl JacobianWork<D>,
) -> Result<MomentJacobians<B>, (Tensor<B, D>, Tensor<B, D>)> {
    match on_inner_with::<B, I, NoCheckpointing, D>(x, y, work) {
        Ok(jacobians) => Ok(jacobians),
        Err((x, y)) => on_inner_with::<B, I, BalancedCheckpointing, D>(x, y, work),
    }
}

/// [`on_inner`] for one checkpointing strategy `C`.
fn on_inner_with<B: Backend, I: Backend, C: CheckpointStrategy, const D: usize>(
    x: Tensor<B, D>,
    y: Tensor<B, D>,
    work: impl JacobianWork<D>,
) -> Result<MomentJacobians<B>, (Tensor<B, D>, Tensor<B, D>)> {
    let x = match cast::<B, Autodiff<I, C>, D>(x) {
        Ok(x) => x,
        Err(x) => return Err((x, y)),
    };
    let y = cast::<B, Autodiff<I, C>, D>(y)
        .unwrap_or_else(|_| unreachable!("x and y share the backend B"));
    let MomentJacobians { mean, mean_sq } = work.run::<I>(x.inner(), y.inner());
    let back = |t: Tensor<I, 2>| {
        cast::<Autodiff<I, C>, B, 2>(Tensor::from_inner(t))
            .unwrap_or_else(|_| unreachable!("B is Autodiff<I, C>"))
    };
    Ok(MomentJacobians {
        mean: back(mean),
        mean_sq: back(mean_sq),
    })
}

/// Whether `E` is burn-ndarray, itself or under autodiff (for the work
/// that takes another route there, see `tap_products`).
pub(crate) fn burn_ndarray<E: Backend>() -> bool {
    type NdArray = burn::backend::NdArray;
    let id = TypeId::of::<E>();
    id == TypeId::of::<NdArray>()
        || id == TypeId::of::<Autodiff<NdArray, NoCheckpointing>>()
        || id == TypeId::of::<Autodiff<NdArray, BalancedCheckpointing>>()
}

/// `tensor` as a `Tensor<A, D>` when `A` is `B`, else `tensor` back.
pub(crate) fn cast<B: Backend, A: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<Tensor<A, D>, Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(tensor);
    boxed
        .downcast::<Tensor<A, D>>()
        .map(|t| *t)
        .map_err(|boxed| {
            *boxed
                .downcast::<Tensor<B, D>>()
                .expect("the tensor just boxed")
        })
}

#[cfg(test)]
mod tests {
    use super::JacobianWork;
    use crate::MomentJacobians;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{backend::Backend, Tensor};

    /// Records whether it ran on an autodiff backend.
    #[derive(Clone, Copy)]
    struct Probe;

    impl JacobianWork<2> for Probe {
        fn run<E: Backend>(self, x: Tensor<E, 2>, y: Tensor<E, 2>) -> MomentJacobians<E> {
            let on_autodiff = E::ad_enabled(&x.device()) as i32 as f64;
            MomentJacobians {
                mean: x.add_scalar(on_autodiff),
                mean_sq: y,
            }
        }
    }

    /// `Autodiff<I, C>` runs the work on `I` and hands back its values; the
    /// autodiff backend itself would add 1 (the fallback for backends this
    /// build cannot name); `I` alone runs the work itself.
    fn work_runs_on_the_inner_backend<I: Backend, C: CheckpointStrategy>(device: &I::Device) {
        let x = Tensor::<Autodiff<I, C>, 2>::from_floats([[1.0, 2.0]], device);
        let y = Tensor::<Autodiff<I, C>, 2>::from_floats([[3.0, 4.0]], device);
        let jacobians = Probe.run_on_inner(x.clone(), y.clone());
        assert_eq!(
            jacobians.mean.to_data().to_vec::<f32>().unwrap(),
            [1.0, 2.0]
        );
        assert_eq!(
            jacobians.mean_sq.to_data().to_vec::<f32>().unwrap(),
            [3.0, 4.0]
        );
        // On itself (the fallback for backends this build cannot name).
        let on_autodiff = Probe.run(x, y);
        assert_eq!(
            on_autodiff.mean.to_data().to_vec::<f32>().unwrap(),
            [2.0, 3.0]
        );
        // A backend that is not an autodiff backend runs the work itself.
        let x = Tensor::<I, 2>::from_floats([[1.0, 2.0]], device);
        let plain = Probe.run_on_inner(x.clone(), x);
        assert_eq!(plain.mean.to_data().to_vec::<f32>().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn work_runs_on_the_inner_backend_ndarray() {
        work_runs_on_the_inner_backend::<NdArray, NoCheckpointing>(&Default::default());
    }

    #[test]
    fn work_runs_on_the_inner_backend_ndarray_balanced_checkpointing() {
        work_runs_on_the_inner_backend::<NdArray, BalancedCheckpointing>(&Default::default());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn work_runs_on_the_inner_backend_cuda() {
        work_runs_on_the_inner_backend::<burn::backend::Cuda, NoCheckpointing>(&Default::default());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn work_runs_on_the_inner_backend_wgpu() {
        work_runs_on_the_inner_backend::<burn::backend::Wgpu, NoCheckpointing>(&Default::default());
    }
}
