//! The Taylor compensation of Cross-Iteration BN's history entries to the
//! current weight, and what an entry keeps for it.
//!
//! An entry holds the moments a past step saw and their Jacobians with
//! respect to the layer's weight (computed by `jacobian`, `conv1d_jacobian`
//! and `conv3d_jacobian`, with the `cross-iter` feature); the window (see
//! [`crate::window`]) averages the entries compensated to the weight of
//! now:
//!
//! ```text
//! mu_i(W) = mu_i + rho * <P_i, W - W_i>     nu_i(W) = nu_i + rho * <Q_i, W - W_i>
//! ```
//!
//! ## Memory: no weight copies
//!
//! The reference compensates with `<J_i, W - W_i>` and keeps a copy of
//! `W_i` per entry. Only the scalar `<J_i, W_i>` per channel is needed, so
//! an entry stores it instead (the *linearization point*, two `C`-vectors
//! computed when the entry is recorded):
//!
//! ```text
//! lin_mu_i = <P_i, W_i> + b_i            lin_nu_i = <Q_i, W_i> + 2 mu_i b_i
//! mu_i(W)  = mu_i + rho * (<P_i, W> + b - lin_mu_i)
//! nu_i(W)  = nu_i + rho * (<Q_i, W> + 2 mu_i b - lin_nu_i)
//! ```
//!
//! `y` is linear in `(W_c, b_c)`, so by Euler `lin_mu_i = mu_i` and
//! `lin_nu_i = 2 nu_i` exactly; storing them anyway keeps the compensation
//! a *difference* of two inner products with the same Jacobian, so rounding
//! in the Jacobian (burn-cuda runs f32 matmuls and convolutions in TF32 on
//! tensor cores) multiplies only the small `W - W_i`, as in the reference.
//! The inner products themselves are elementwise products and sums, full
//! float32 on every backend.
//!
//! An entry holds `P` (`G x F` floats), `Q` (`|W|`), `mu`, `nu` and the two
//! linearization points (`C` each), against the reference's `3 |W| + 2C`.
//!
//! ## Layout
//!
//! Weights are viewed as `[G, C/G, F]`: `G` groups, `C/G` output channels
//! per group, `F` values per patch (`C_in/G * kh * kw` for a conv, `d_in`
//! for a linear layer).

use burn::tensor::Tensor;

/// What one training step contributes to the history: the derivatives of
/// the current per-channel moments with respect to the layer's weight.
#[derive(Debug, Clone)]
pub struct MomentJacobians {
    /// `d mu / d W` per group, `[G, F]`.
    pub mean: Tensor<2>,
    /// `d nu / d W` per output channel, `[C, F]`.
    pub mean_sq: Tensor<2>,
}

/// Inner products of recorded Jacobians with a weight (and bias), per
/// entry and channel: `<P_i, W_c> + b_c` and `<Q_i, W_c> + 2 mu_i,c b_c`,
/// each `[K, C]`.
///
/// `jac_mean` `[K, G, F]`, `jac_mean_sq` `[K, C, F]`, `mean` `[K, C]` (the
/// entries' means, for the bias term), `weight` `[G, C/G, F]`, `bias` `[C]`.
/// Elementwise products and sums: float32 on every backend (no tensor-core
/// matmul).
pub fn linearize(
    jac_mean: Tensor<3>,
    jac_mean_sq: Tensor<3>,
    mean: Tensor<2>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
) -> (Tensor<2>, Tensor<2>) {
    let [k, c] = mean.dims();
    let bias_free = bias.is_none();
    let (p_w, q_w) = linearize_per_entry(jac_mean, jac_mean_sq, mean, weight, bias);
    // `* 1` (exact) gives each sum an operation after it, which lets a
    // fusing backend merge the product before a sum into the sum's kernel
    // (with a bias, its addition plays that part).
    let (p_w, q_w) = if bias_free {
        (p_w.mul_scalar(1.0), q_w.mul_scalar(1.0))
    } else {
        (p_w, q_w)
    };
    (p_w.reshape([k, c]), q_w.reshape([k, c]))
}

/// [`linearize`] with the per-channel values as `[K, G, C/G, 1]` and
/// `[K, C, 1]`, the shapes its sums leave: burn's fusion does not merge a
/// sum with the elementwise work after it across a reshape of the sum, so
/// [`HistoryEntries::compensate`] finishes in these shapes.
fn linearize_per_entry(
    jac_mean: Tensor<3>,
    jac_mean_sq: Tensor<3>,
    mean: Tensor<2>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
) -> (Tensor<4>, Tensor<3>) {
    let [k, g, f] = jac_mean.dims();
    let [_, c_g, _] = weight.dims();
    let c = g * c_g;
    let p_w = jac_mean
        .reshape([k, g, 1, f])
        .mul(weight.clone().reshape([1, g, c_g, f]))
        .sum_dim(3);
    let q_w = jac_mean_sq.mul(weight.reshape([1, c, f])).sum_dim(2);
    match bias {
        Some(b) => (
            p_w.add(b.clone().reshape([1, g, c_g, 1])),
            q_w.add(
                mean.reshape([k, c, 1])
                    .mul(b.reshape([1, c, 1]))
                    .mul_scalar(2.0),
            ),
        ),
        None => (p_w, q_w),
    }
}

/// History moments compensated to the current weight.
#[derive(Debug, Clone)]
pub struct CompensatedMoments {
    /// `mu_i(W)`, `[K, C]`.
    pub mean: Tensor<2>,
    /// `nu_i(W)`, `[K, C]`.
    pub mean_sq: Tensor<2>,
}

/// `K` recorded history entries: moments, Jacobians and linearization
/// points (see the module docs).
#[derive(Debug, Clone)]
pub struct HistoryEntries {
    /// `mu_i`, `[K, C]`.
    pub mean: Tensor<2>,
    /// `nu_i`, `[K, C]`.
    pub mean_sq: Tensor<2>,
    /// `P_i = d mu_i / dW` per group, `[K, G, F]`.
    pub jac_mean: Tensor<3>,
    /// `Q_i = d nu_i / dW` per channel, `[K, C, F]`.
    pub jac_mean_sq: Tensor<3>,
    /// `<P_i, W_i> + b_i`, `[K, C]`.
    pub lin_mean: Tensor<2>,
    /// `<Q_i, W_i> + 2 mu_i b_i`, `[K, C]`.
    pub lin_mean_sq: Tensor<2>,
}

impl HistoryEntries {
    /// The entries without autodiff.
    pub(crate) fn without_autodiff(self) -> Self {
        HistoryEntries {
            mean: self.mean.inner(),
            mean_sq: self.mean_sq.inner(),
            jac_mean: self.jac_mean.inner(),
            jac_mean_sq: self.jac_mean_sq.inner(),
            lin_mean: self.lin_mean.inner(),
            lin_mean_sq: self.lin_mean_sq.inner(),
        }
    }

    /// One entry recorded now: this step's moments `[C]` and Jacobians at
    /// the current `weight` `[G, C/G, F]` and `bias` (pass them detached).
    pub fn record(
        mean: Tensor<1>,
        mean_sq: Tensor<1>,
        jacobians: MomentJacobians,
        weight: Tensor<3>,
        bias: Option<Tensor<1>>,
    ) -> Self {
        let [c] = mean.dims();
        let [g, f] = jacobians.mean.dims();
        let mean = mean.reshape([1, c]);
        let jac_mean = jacobians.mean.reshape([1, g, f]);
        let jac_mean_sq = jacobians.mean_sq.reshape([1, c, f]);
        let (lin_mean, lin_mean_sq) = linearize(
            jac_mean.clone(),
            jac_mean_sq.clone(),
            mean.clone(),
            weight,
            bias,
        );
        HistoryEntries {
            mean,
            mean_sq: mean_sq.reshape([1, c]),
            jac_mean,
            jac_mean_sq,
            lin_mean,
            lin_mean_sq,
        }
    }

    /// First-order compensation of every entry to the current `weight`
    /// `[G, C/G, F]` and `bias` `[C]`, with Taylor factor `rho` (0 = naive
    /// averaging of stale statistics).
    ///
    /// Gradients flow into `weight` and `bias` from whatever graph they
    /// carry: pass them detached for the reference's constant history terms.
    pub fn compensate(
        self,
        weight: Tensor<3>,
        bias: Option<Tensor<1>>,
        rho: f64,
    ) -> CompensatedMoments {
        if rho == 0.0 {
            return CompensatedMoments {
                mean: self.mean,
                mean_sq: self.mean_sq,
            };
        }
        let [k, g, _] = self.jac_mean.dims();
        let [_, c_g, _] = weight.dims();
        let c = g * c_g;
        let (p_w, q_w) = linearize_per_entry(
            self.jac_mean,
            self.jac_mean_sq,
            self.mean.clone(),
            weight,
            bias,
        );
        // mu + rho (<P, W> + b - lin), in the shapes the sums leave.
        let grouped = |t: Tensor<2>| t.reshape([k, g, c_g, 1]);
        let mean = grouped(self.mean)
            .add(p_w.sub(grouped(self.lin_mean)).mul_scalar(rho))
            .reshape([k, c]);
        let mean_sq = self
            .mean_sq
            .reshape([k, c, 1])
            .add(q_w.sub(self.lin_mean_sq.reshape([k, c, 1])).mul_scalar(rho))
            .reshape([k, c]);
        CompensatedMoments { mean, mean_sq }
    }
}
