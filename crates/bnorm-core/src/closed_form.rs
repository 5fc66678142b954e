//! The normalization training step ([`NormStep`]: CBN's, and BRN's
//! corrected plain step) as one autodiff operation with its gradient in
//! closed form.
//!
//! Backward, with `g = dL/dout`, `Sg = sum g`, `Sgc = sum g (y - mu)` and
//! the keep mask constant (it is a comparison), in the notation of
//! [`crate::norm_step`]:
//!
//! ```text
//! dbeta  = Sg,    dgamma = inv_std Sgc,    dvar = gamma Sgc (d inv_std / d var)
//! dmu    = -s Sg - 2 mu f dvar                              (through out and var)
//! dy     = s g - (s Sg + 2 f dvar (mu - mu_t)) / (n M) + 2 f dvar (y - mu_t) / (n M)
//! dW     = rho / n * (dmu * sum_i keep_i P_i + dvar * sum_i keep_i Q_i)
//! db     = rho / n * (dmu * sum_i keep_i + dvar * sum_i keep_i 2 mu_i)
//! ```
//!
//! (`dy` is `s g + dmu_t / M + 2 y dnu_t / M` with `dmu_t = dmu / n` and
//! `dnu_t = f dvar / n`; `dW` and `db` reach the compensated entries
//! `mu_i(W) = mu_i + rho (<P_i, W> + b - lin)`, `nu_i(W) = nu_i + rho
//! (<Q_i, W> + 2 mu_i b - lin)` through `dmu_i = keep_i dmu / n` and
//! `dnu_i = keep_i dvar / n`.)
//!
//! With Batch Renormalization's correction, `gamma` above is `gamma r`
//! and the parameters' gradients are `dgamma = r inv_std Sgc + d Sg` and
//! `dbeta = Sg` (`r` and `d` constants).
//!
//! Why: burn's autodiff differentiates the step operation by operation and
//! keeps every intermediate of the window's dozens of `[C]`- and
//! `[K, C]`-sized operations; on a GPU, where a small-batch step is bound
//! by kernel launches, each of them is a kernel. Here the forward pass runs
//! without autodiff and the backward pass is two channel sums of the
//! full-size gradient and a handful of elementwise maps.
//!
//! Where: an autodiff device whose backend is burn-ndarray, burn-flex or,
//! with the `wgpu` or the `cuda` feature, burn's cubecl backend (wgpu, CUDA
//! and the other cubecl runtimes share one backend type), under either of
//! burn's gradient-checkpointing strategies (the operation is compute-bound
//! and keeps its own state, so it is the same under both). Elsewhere
//! [`NormStep::run`] takes burn's autodiff route.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, DispatchKindConversion, DispatchTensor, GradientCheckpointingStrategy,
};
use burn::tensor::Tensor;

use crate::backend::{backend, BackendKind as Route};
#[cfg(feature = "cross-iter")]
use crate::compensation_gradient::CompensationSums;
use crate::moments::{bessel_factor, values_per_channel};
#[cfg(feature = "cross-iter")]
use crate::norm_step::{EntriesSource, WindowTerms};
use crate::norm_step::{NormStep, NormStepOutput, RenormTerms, StepStatistics};
use crate::shape::{flatten_spatial, sum_axis};

/// `$f::<B, C, generics...>(args...)` for the autodiff backend
/// `Autodiff<B, C>` of a [`Route`] and a gradient-checkpointing strategy:
/// the one place a runtime device becomes a backend type for the crate's
/// autodiff operations.
macro_rules! on_autodiff_backend {
    ($route:expr, $strategy:expr, $f:ident::<$($generic:tt),*>($($arg:expr),* $(,)?)) => {{
        #[allow(deprecated)]
        match $route {
            $crate::backend::BackendKind::NdArray => on_autodiff_backend!(
                @strategy burn::backend::NdArray, $strategy, $f, [$($generic),*], ($($arg),*)
            ),
            $crate::backend::BackendKind::Flex => on_autodiff_backend!(
                @strategy burn::backend::Flex, $strategy, $f, [$($generic),*], ($($arg),*)
            ),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            $crate::backend::BackendKind::Cube => on_autodiff_backend!(
                @strategy burn::backend::Cube, $strategy, $f, [$($generic),*], ($($arg),*)
            ),
        }
    }};
    (@strategy $backend:ty, $strategy:expr, $f:ident, [$($generic:tt),*], ($($arg:expr),*)) => {
        match $strategy {
            burn::backend::GradientCheckpointingStrategy::Disabled => $f::<
                $backend,
                burn::backend::autodiff::checkpoint::strategy::NoCheckpointing,
                $($generic),*
            >($($arg),*),
            burn::backend::GradientCheckpointingStrategy::Balanced => $f::<
                $backend,
                burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
                $($generic),*
            >($($arg),*),
        }
    };
}
#[cfg(feature = "cross-iter")]
pub(crate) use on_autodiff_backend;

/// The backend of a step on `y`'s device and its checkpointing strategy,
/// if the closed form covers it.
fn route<const D: usize>(y: &Tensor<D>) -> Option<(Route, GradientCheckpointingStrategy)> {
    // Without autodiff there is no graph to record.
    let strategy = y.gradient_checkpointing_strategy()?;
    Some((backend(&y.device())?, strategy))
}

/// Whether [`closed_form`] covers `step`'s device.
pub(crate) fn covers<const D: usize>(step: &NormStep<D>) -> bool {
    route(&step.y).is_some()
}

/// The step as one operation with the closed-form gradient.
///
/// # Panics
///
/// If the step's device is not one the closed form [`covers`].
pub(crate) fn closed_form<const D: usize>(step: NormStep<D>) -> NormStepOutput<D> {
    let (route, strategy) = route(&step.y).expect("a device the closed form covers");
    on_autodiff_backend!(route, strategy, on_backend::<D>(step, strategy))
}

/// `tensor`'s autodiff primitive on `Autodiff<B, C>` (its value and graph
/// node); a tensor without autodiff becomes an untracked one.
pub(crate) fn graph_primitive<B: Backend, C: CheckpointStrategy, const R: usize>(
    tensor: Tensor<R>,
    strategy: GradientCheckpointingStrategy,
) -> FloatTensor<Autodiff<B, C>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, C>>,
{
    tensor
        .autodiff()
        .with_gradient_checkpointing_strategy(strategy)
        .try_into_primitive::<Autodiff<B, C>>()
        .unwrap_or_else(|error| panic!("the step's tensors share its backend: {error:?}"))
}

/// `tensor`'s primitive on `B` (`tensor` without autodiff, on `B`).
fn primitive<B: Backend, const R: usize>(tensor: Tensor<R>) -> FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    tensor
        .try_into_primitive::<B>()
        .unwrap_or_else(|error| panic!("the step's values live on its backend: {error:?}"))
}

/// A primitive of `B` as a tensor (without autodiff).
pub(crate) fn tensor<B: Backend, const R: usize>(primitive: FloatTensor<B>) -> Tensor<R>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    Tensor::from_primitive::<B>(primitive)
}

/// The step on `Autodiff<B, C>`: the forward pass without autodiff,
/// registered as one operation whose parents are `y`, the weight, the
/// bias, `gamma` and `beta`.
fn on_backend<B: Backend, C: CheckpointStrategy, const D: usize>(
    step: NormStep<D>,
    strategy: GradientCheckpointingStrategy,
) -> NormStepOutput<D>
where
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    let count = values_per_channel(&step.y.dims());
    let y_value = step.y.clone().inner();
    // An absent parent is an untracked node, without gradient, on `y`'s
    // value (no new device work).
    let absent = || graph_primitive::<B, C, D>(y_value.clone(), strategy);
    let (statistics, weight, bias) = match step.statistics {
        // The weight and bias only enter through the compensation.
        #[cfg(feature = "cross-iter")]
        StepStatistics::Window(Some(terms)) if terms.rho != 0.0 => {
            let inner_terms = WindowTerms {
                entries: without_autodiff(terms.entries),
                filled: terms.filled,
                weight: terms.weight.clone().inner(),
                bias: terms.bias.clone().map(Tensor::inner),
                rho: terms.rho,
            };
            let weight = graph_primitive::<B, C, 3>(terms.weight, strategy);
            let bias = terms
                .bias
                .map(|b| graph_primitive::<B, C, 1>(b, strategy))
                .unwrap_or_else(absent);
            (StepStatistics::Window(Some(inner_terms)), weight, bias)
        }
        #[cfg(feature = "cross-iter")]
        StepStatistics::Window(terms) => {
            let terms = terms.map(|t| WindowTerms {
                entries: without_autodiff(t.entries),
                filled: t.filled,
                weight: t.weight.inner(),
                bias: t.bias.map(Tensor::inner),
                rho: t.rho,
            });
            (StepStatistics::Window(terms), absent(), absent())
        }
        StepStatistics::Plain { unbiased } => {
            (StepStatistics::Plain { unbiased }, absent(), absent())
        }
    };
    let var_factor = match statistics {
        StepStatistics::Plain { unbiased: true } => bessel_factor(count),
        _ => 1.0,
    };
    // What the weight and bias gradients take besides the forward pass.
    #[cfg(feature = "cross-iter")]
    let compensation = match &statistics {
        StepStatistics::Window(Some(terms)) if terms.rho != 0.0 => {
            Some((terms.rho, terms.weight.dims()))
        }
        _ => None,
    };
    let gamma = step.gamma.map(|g| graph_primitive::<B, C, 1>(g, strategy));
    let beta = step.beta.map(|b| graph_primitive::<B, C, 1>(b, strategy));
    let value = |t: &FloatTensor<Autodiff<B, C>>| tensor::<B, 1>(t.primitive().clone());
    let inner_step = NormStep::<D> {
        y: y_value.clone(),
        gamma: gamma.as_ref().map(value),
        beta: beta.as_ref().map(value),
        statistics,
        epsilon: step.epsilon,
        eps_placement: step.eps_placement,
        renorm: step.renorm.map(|terms| RenormTerms {
            running_mean: terms.running_mean.inner(),
            running_std: terms.running_std.inner(),
            ..terms
        }),
    };
    let eps_placement = inner_step.eps_placement;
    let forward = inner_step.forward();
    let (weight_tracked, bias_tracked) = (weight.is_tracked(), bias.is_tracked());
    let y = graph_primitive::<B, C, D>(step.y, strategy);
    let parents = [
        y.node(),
        weight.node(),
        bias.node(),
        gamma.unwrap_or_else(absent).node(),
        beta.unwrap_or_else(absent).node(),
    ];
    let output = primitive::<B, D>(forward.output.clone());
    let output = match ClosedFormBackward::<D>
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            #[cfg(feature = "cross-iter")]
            let compensation = compensation
                .filter(|_| weight_tracked || bias_tracked)
                .map(|(rho, weight_dims)| CompensationSums::new(rho, weight_dims, &forward));
            #[cfg(not(feature = "cross-iter"))]
            let _ = (weight_tracked, bias_tracked);
            let saved = Saved {
                y: forward.flat_y.clone(),
                batch_mean: forward.batch_mean_column.clone(),
                scale: forward.scale.clone(),
                inv_std: forward.inv_std.clone(),
                gamma: forward.gamma_eff.clone(),
                renorm: forward.renorm.clone(),
                mean_gap: forward.mean.clone().sub(forward.batch_mean.clone()),
                #[cfg(feature = "cross-iter")]
                mean: forward.mean.clone(),
                inv_std_slope: eps_placement
                    .std_derivative(forward.var.clone(), forward.std.clone())
                    .mul(forward.inv_std.clone().square())
                    .neg(),
                var_factor,
                inv_count: forward.window_inv_count(),
                count,
                #[cfg(feature = "cross-iter")]
                compensation,
            };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    // The statistics as untracked tensors of the step's autodiff device.
    let untracked = |t: Tensor<1>| t.autodiff().with_gradient_checkpointing_strategy(strategy);
    NormStepOutput {
        output: Tensor::from_primitive::<Autodiff<B, C>>(output),
        batch_mean: untracked(forward.batch_mean),
        batch_var: untracked(forward.batch_var),
        batch_mean_sq: untracked(forward.batch_mean_sq),
        mean: untracked(forward.mean),
        var: untracked(forward.var),
        std: untracked(forward.std),
    }
}

/// `entries` without autodiff when read.
#[cfg(feature = "cross-iter")]
fn without_autodiff(entries: EntriesSource) -> EntriesSource {
    EntriesSource::new(move || entries.read().without_autodiff())
}

/// The gradient of [`on_backend`]'s output.
#[derive(Debug)]
struct ClosedFormBackward<const D: usize>;

/// What the backward pass keeps from the forward pass: values without
/// autodiff on the step's backend.
#[derive(Debug, Clone)]
struct Saved {
    /// `y`, `[N, C, S]`: the step's input, which its caller's graph keeps
    /// anyway where it is a layer's input (BRN), rather than a new buffer
    /// `y - mu_t` (recomputed in the backward pass, one subtraction).
    y: Tensor<3>,
    /// `mu_t`, `[1, C, 1]`.
    batch_mean: Tensor<3>,
    /// `s = gamma * inv_std`.
    scale: Tensor<1>,
    inv_std: Tensor<1>,
    /// The scale normalized with: `gamma`, or `gamma r` (`r`) with Batch
    /// Renormalization's correction.
    gamma: Option<Tensor<1>>,
    /// `r` and `d` (Batch Renormalization's correction): `gamma`'s
    /// gradient is `r dgamma_eff + d dbeta_eff`.
    renorm: Option<(Tensor<1>, Tensor<1>)>,
    /// `mu - mu_t` (0 for a plain step).
    mean_gap: Tensor<1>,
    /// `mu` (for the compensation's `dmu`).
    #[cfg(feature = "cross-iter")]
    mean: Tensor<1>,
    /// `d inv_std / d var`.
    inv_std_slope: Tensor<1>,
    /// `f`.
    var_factor: f64,
    /// `1 / n` (a window step with entries; 1 otherwise).
    inv_count: Option<Tensor<1>>,
    /// `M`.
    count: usize,
    /// What the gradients into the weight and bias take (a compensated
    /// window step whose weight or bias is tracked).
    #[cfg(feature = "cross-iter")]
    compensation: Option<CompensationSums>,
}

impl<B: Backend, const D: usize> Backward<B, 5> for ClosedFormBackward<D>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = Saved;

    /// The module docs' formulas, on the `[N, C, S]` view with per-channel
    /// values as `[1, C, 1]` (and `[1, C]`, `[C, F]` for the compensation)
    /// up to each gradient's final reshape: a fusing backend does not merge
    /// a sum with the elementwise work after it across a reshape of the sum.
    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad: Tensor<D> = tensor::<B, D>(grads.consume::<B>(&ops.node));
        let [y_node, weight_node, bias_node, gamma_node, beta_node] =
            ops.parents.map(|parent| parent.map(|node| node.id));
        let saved = ops.state;
        let dims = grad.dims();
        let c = dims[1];
        let column = |t: Tensor<1>| t.reshape([1, c, 1]);
        let channel_sum = |t: Tensor<3>| sum_axis(sum_axis(t, 2), 0);
        let grad = flatten_spatial(grad);
        let sum_g = channel_sum(grad.clone());
        // sum g (y - mu) = sum g (y - mu_t) - (mu - mu_t) sum g
        let mean_gap = column(saved.mean_gap);
        let centered = saved.y.sub(saved.batch_mean);
        let sum_gc = channel_sum(grad.clone().mul(centered.clone()))
            .sub(mean_gap.clone().mul(sum_g.clone()));
        let inv_std = column(saved.inv_std);
        if gamma_node.is_some() {
            let d_gamma = sum_gc.clone().mul(inv_std);
            let d_gamma = match &saved.renorm {
                Some((r, d)) => d_gamma
                    .mul(column(r.clone()))
                    .add(sum_g.clone().mul(column(d.clone()))),
                None => d_gamma,
            };
            register_grad::<B, 1>(grads, gamma_node, d_gamma.reshape([c]));
        }
        if beta_node.is_some() {
            register_grad::<B, 1>(grads, beta_node, sum_g.clone().reshape([c]));
        }
        let d_inv_std = match saved.gamma {
            Some(gamma) => sum_gc.mul(column(gamma)),
            None => sum_gc,
        };
        let d_var = d_inv_std.mul(column(saved.inv_std_slope));
        let f_d_var = d_var.clone().mul_scalar(saved.var_factor);
        let scale = column(saved.scale);
        let s_sum_g = scale.clone().mul(sum_g);
        #[cfg(feature = "cross-iter")]
        if let Some(sums) = saved.compensation {
            // dmu (through out and var) reaches only the compensated
            // entries: computed for them alone.
            let d_mean = s_sum_g
                .clone()
                .add(column(saved.mean).mul(f_d_var.clone()).mul_scalar(2.0))
                .neg();
            let inv_count = saved.inv_count.clone().expect("a window step with entries");
            let nodes = [weight_node, bias_node];
            sums.register_grads::<B>(grads, nodes, [d_mean, d_var], inv_count);
        }
        #[cfg(not(feature = "cross-iter"))]
        let _ = (weight_node, bias_node, d_var);
        // 1 / (n M), per channel.
        let per_value = match &saved.inv_count {
            Some(inv_count) => column(inv_count.clone()).div_scalar(saved.count as f64),
            None => s_sum_g.ones_like().div_scalar(saved.count as f64),
        };
        if y_node.is_some() {
            let offset = s_sum_g
                .add(f_d_var.clone().mul(mean_gap).mul_scalar(2.0))
                .mul(per_value.clone())
                .neg();
            let slope = f_d_var.mul(per_value).mul_scalar(2.0);
            let d_y = grad
                .mul(scale)
                .add(offset)
                .add(centered.mul(slope))
                .reshape(dims);
            register_grad::<B, D>(grads, y_node, d_y);
        }
    }
}

/// Adds `gradient` to the gradient of `node`, if it takes one.
pub(crate) fn register_grad<B: Backend, const R: usize>(
    grads: &mut Gradients,
    node: Option<NodeId>,
    gradient: Tensor<R>,
) where
    DispatchTensor: DispatchKindConversion<B>,
{
    if let Some(node) = node {
        grads.register::<B>(node, primitive::<B, R>(gradient));
    }
}

#[cfg(test)]
mod tests {
    use super::{closed_form, covers};
    #[cfg(feature = "cross-iter")]
    use crate::norm_step::{EntriesSource, WindowTerms};
    use crate::norm_step::{NormStep, RenormTerms, StepStatistics};
    use crate::EpsPlacement;
    #[cfg(feature = "cross-iter")]
    use crate::HistoryEntries;
    use burn::tensor::{Device, Tensor, TensorData};

    const GROUPS: usize = 2;
    const CHANNELS: usize = 4;
    const PATCH: usize = 3;
    #[cfg(feature = "cross-iter")]
    const ENTRIES: usize = 3;
    /// The kinds of step [`compare`] runs: plain unbiased and biased (0,
    /// 1), Batch Renormalization's corrected plain step (7) and, with the
    /// `cross-iter` feature, the window's (2 to 6).
    #[cfg(feature = "cross-iter")]
    const STATISTICS: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
    #[cfg(not(feature = "cross-iter"))]
    const STATISTICS: [usize; 3] = [0, 1, 7];

    thread_local! {
        /// This thread's draws (see [`random`]).
        static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Standard normal values from a fixed sequence of this thread: the
    /// same inputs on every run, whatever other tests draw meanwhile from
    /// burn's shared generator. With fresh draws, a few runs in a hundred
    /// met a channel whose variance came out near zero (4e-4 from 3
    /// values); there burn's autodiff carries its rounding of
    /// `d var / d mu = -2 mean(y - mu)`, zero in exact arithmetic and in
    /// the closed form, times a gradient of `var` that grows as
    /// `var^(-3/2)`: past the 2e-5 the comparison allows.
    fn random<const R: usize>(dims: [usize; R], device: &Device) -> Tensor<R> {
        let uniform = || {
            // SplitMix64, to (0, 1].
            let state = DRAWS.with(|d| {
                let s = d.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
                d.set(s);
                s
            });
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        };
        let count = dims.iter().product();
        // Box-Muller.
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(values, dims), device)
    }

    /// Random history entries; entry 1 of channel 2 has a negative
    /// variance (`nu < mu^2`), so the window drops it there.
    #[cfg(feature = "cross-iter")]
    fn entries(device: &Device) -> HistoryEntries {
        let mean = random([ENTRIES, CHANNELS], device);
        let spread = random([ENTRIES, CHANNELS], device).abs().add_scalar(0.5);
        let mut mean_sq = mean.clone().square().add(spread);
        mean_sq = mean_sq.slice_assign([1..2, 2..3], Tensor::full([1, 1], -50.0, device));
        HistoryEntries {
            mean,
            mean_sq,
            jac_mean: random([ENTRIES, GROUPS, PATCH], device),
            jac_mean_sq: random([ENTRIES, CHANNELS, PATCH], device),
            lin_mean: random([ENTRIES, CHANNELS], device),
            lin_mean_sq: random([ENTRIES, CHANNELS], device),
        }
    }

    /// `y`, the weight, the bias, `gamma`, `beta`.
    type Leaves<'a, const D: usize> = (
        &'a Tensor<D>,
        &'a Tensor<3>,
        &'a Tensor<1>,
        &'a Tensor<1>,
        &'a Tensor<1>,
    );

    /// Value and gradients (output, y, weight, bias, gamma, beta) of
    /// `sum(out * probe)`.
    fn evaluate<const D: usize>(
        output: Tensor<D>,
        probe: &Tensor<D>,
        leaves: Leaves<'_, D>,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let grads = output.clone().mul(probe.clone()).sum().backward();
        let values = |t: Option<Tensor<1>>| {
            t.map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                .unwrap_or_default()
        };
        let (y, weight, bias, gamma, beta) = leaves;
        vec![
            ("output", output.into_data().try_to_vec::<f32>().unwrap()),
            ("y", values(y.grad(&grads).map(|g| g.flatten(0, D - 1)))),
            (
                "weight",
                values(weight.grad(&grads).map(|g| g.flatten(0, 2))),
            ),
            ("bias", values(bias.grad(&grads))),
            ("gamma", values(gamma.grad(&grads))),
            ("beta", values(beta.grad(&grads))),
        ]
    }

    /// The closed-form gradient equals burn's autodiff's, operation by
    /// operation, for every kind of step (plain biased and unbiased, a
    /// window without entries, with all or some entries filled, with a
    /// negative-variance entry dropped, `rho` 0 and not), with and without
    /// bias, affine parameters and the history gradient, Batch
    /// Renormalization's corrected step, both eps placements, ranks 2 to 4
    /// and a batch of one value per channel (variance 0). The output is bit for bit the same (the same
    /// operations on the same backend).
    fn closed_form_gradient_is_autodiffs(device: &Device) {
        DRAWS.with(|d| d.set(0));
        let mut cases = 0;
        let mut weight_gradients = 0;
        let mut routes_differ = 0;
        for dims in [
            vec![2, CHANNELS, 3, 2],
            vec![5, CHANNELS],
            vec![1, CHANNELS, 1, 1],
            vec![1, CHANNELS, 3],
        ] {
            for statistics in STATISTICS {
                for placement in [EpsPlacement::InsideSqrt, EpsPlacement::OnStd] {
                    for (affine, with_bias, history_gradient) in [
                        (true, true, true),
                        (false, false, true),
                        (true, false, false),
                    ] {
                        let case = Case {
                            statistics,
                            eps_placement: placement,
                            affine,
                            with_bias,
                            history_gradient,
                        };
                        let compared = match dims.len() {
                            2 => compare::<2>(&dims, &case, device),
                            3 => compare::<3>(&dims, &case, device),
                            _ => compare::<4>(&dims, &case, device),
                        };
                        weight_gradients += usize::from(compared.weight_gradient);
                        routes_differ += usize::from(compared.routes_differ);
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * STATISTICS.len() * 2 * 3);
        // Window steps with entries, rho != 0 and the history gradient.
        let window_weight_gradients = if cfg!(feature = "cross-iter") {
            4 * 3 * 2 * 2
        } else {
            0
        };
        assert_eq!(weight_gradients, window_weight_gradients);
        // The two routes round differently somewhere, so the check that
        // `run` is the closed form bit for bit can fail.
        assert!(
            routes_differ > 0,
            "burn's autodiff route matched the closed form bit for bit"
        );
    }

    #[test]
    #[allow(deprecated)]
    fn closed_form_gradient_is_autodiffs_ndarray() {
        closed_form_gradient_is_autodiffs(&Device::ndarray().autodiff());
    }

    #[test]
    fn closed_form_gradient_is_autodiffs_flex() {
        closed_form_gradient_is_autodiffs(&Device::flex().autodiff());
    }

    /// Under burn's balanced gradient checkpointing, which recomputes
    /// memory-bound operations in the backward pass to save memory: the
    /// closed form too, not burn's autodiff route.
    #[test]
    fn closed_form_gradient_is_autodiffs_flex_balanced_checkpointing() {
        closed_form_gradient_is_autodiffs(&Device::flex().autodiff().gradient_checkpointing());
    }

    /// burn's cubecl kernels: the closed form's own backward pass on the
    /// GPU route (the layers' tests cover it only through their results).
    /// CI runs it on lavapipe.
    #[cfg(feature = "wgpu")]
    #[test]
    fn closed_form_gradient_is_autodiffs_wgpu() {
        closed_form_gradient_is_autodiffs(
            &Device::wgpu(burn::tensor::DeviceKind::default()).autodiff(),
        );
    }

    /// Likewise on CUDA (run from the GPU test pack: no CUDA device here).
    #[cfg(feature = "cuda")]
    #[test]
    fn closed_form_gradient_is_autodiffs_cuda() {
        closed_form_gradient_is_autodiffs(&Device::cuda(0).autodiff());
    }

    /// Without autodiff there is no graph to record: not covered.
    #[test]
    fn closed_form_does_not_cover_a_device_without_autodiff() {
        let device = Device::flex();
        let step = NormStep {
            y: Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 5.0]], &device),
            gamma: None,
            beta: None,
            statistics: StepStatistics::Plain { unbiased: false },
            epsilon: 1e-5,
            eps_placement: EpsPlacement::InsideSqrt,
            renorm: None,
        };
        assert!(!covers(&step));
        let autodiff = NormStep {
            y: step.y.clone().autodiff(),
            ..step
        };
        assert!(covers(&autodiff));
    }

    /// One configuration of [`closed_form_gradient_is_autodiffs`].
    #[derive(Debug)]
    struct Case {
        /// Which `StepStatistics` (0 to 6, see `compare`; 7 is Batch
        /// Renormalization's corrected plain step).
        statistics: usize,
        eps_placement: EpsPlacement,
        affine: bool,
        with_bias: bool,
        history_gradient: bool,
    }

    /// What [`compare`] saw in one case.
    struct Compared {
        /// The weight took a gradient.
        weight_gradient: bool,
        /// Some gradient of burn's autodiff route differs from the closed
        /// form's in a bit.
        routes_differ: bool,
    }

    /// Compares the two routes on one case, and checks that
    /// [`NormStep::run`] takes the closed form: its gradients are the closed
    /// form's bit for bit.
    fn compare<const D: usize>(dims: &[usize], case: &Case, device: &Device) -> Compared {
        let &Case {
            statistics,
            eps_placement,
            affine,
            with_bias,
            history_gradient,
        } = case;
        let case = format!("dims {dims:?} {case:?}");
        let dims: [usize; D] = dims.try_into().unwrap();
        // An offset mean, as conv outputs have.
        let y = random::<D>(dims, device).add_scalar(1.5).require_grad();
        let weight = random([GROUPS, CHANNELS / GROUPS, PATCH], device).require_grad();
        let bias = random([CHANNELS], device).require_grad();
        let gamma = random([CHANNELS], device).add_scalar(1.0).require_grad();
        let beta = random([CHANNELS], device).require_grad();
        let probe = random::<D>(dims, device);
        #[cfg(feature = "cross-iter")]
        let tracked = |t: Tensor<3>| if history_gradient { t } else { t.detach() };
        #[cfg(feature = "cross-iter")]
        let tracked_bias = |t: Tensor<1>| if history_gradient { t } else { t.detach() };
        #[cfg(feature = "cross-iter")]
        let terms = |filled, rho| {
            Some(WindowTerms {
                entries: EntriesSource::values(entries(device)),
                filled,
                weight: tracked(weight.clone()),
                bias: with_bias.then(|| tracked_bias(bias.clone())),
                rho,
            })
        };
        // Batch Renormalization's correction: running statistics that
        // clip `r` (bounds 1/1.5 and 1.5) and `d` (0.5) in some channels
        // and not in others.
        let renorm = (statistics == 7).then(|| RenormTerms {
            running_mean: random([CHANNELS], device).add_scalar(1.5),
            running_std: random([CHANNELS], device).abs().add_scalar(0.4),
            rmax: 1.5,
            dmax: 0.5,
        });
        let statistics = match statistics {
            0 => StepStatistics::Plain { unbiased: true },
            1 | 7 => StepStatistics::Plain { unbiased: false },
            #[cfg(feature = "cross-iter")]
            2 => StepStatistics::Window(None),
            #[cfg(feature = "cross-iter")]
            3 => StepStatistics::Window(terms(ENTRIES, 1.0)),
            #[cfg(feature = "cross-iter")]
            4 => StepStatistics::Window(terms(2, 0.5)),
            #[cfg(feature = "cross-iter")]
            5 => StepStatistics::Window(terms(1, 1.0)),
            #[cfg(feature = "cross-iter")]
            6 => StepStatistics::Window(terms(ENTRIES, 0.0)),
            other => unreachable!("no step kind {other}"),
        };
        #[cfg(not(feature = "cross-iter"))]
        let _ = (with_bias, history_gradient);
        let step = NormStep {
            y: y.clone(),
            gamma: affine.then(|| gamma.clone()),
            beta: affine.then(|| beta.clone()),
            statistics,
            epsilon: 1e-3,
            eps_placement,
            renorm,
        };
        let leaves = (&y, &weight, &bias, &gamma, &beta);
        assert!(covers(&step), "{device:?} takes the closed form");
        let closed = closed_form(step.clone());
        let closed = evaluate(closed.output, &probe, leaves);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let routed = evaluate(step.clone().run().output, &probe, leaves);
        for ((name, got), (_, want)) in routed.iter().zip(&closed) {
            assert_eq!(
                bits(got),
                bits(want),
                "{case}: run's {name} is the closed form's"
            );
        }
        let reference = evaluate(step.through_autodiff().output, &probe, leaves);
        let compared = Compared {
            weight_gradient: !closed[2].1.is_empty(),
            routes_differ: closed
                .iter()
                .zip(&reference)
                .any(|((_, got), (_, want))| bits(got) != bits(want)),
        };
        for ((name, got), (_, want)) in closed.iter().zip(&reference) {
            assert_eq!(got.len(), want.len(), "{case}: {name} present in one only");
            if *name == "output" {
                assert_eq!(bits(got), bits(want), "{case}: output");
                continue;
            }
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-5 * scale,
                    "{case}: d{name}[{i}] closed form {g}, autodiff {w} (scale {scale})"
                );
            }
        }
        compared
    }
}
