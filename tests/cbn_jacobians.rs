//! The closed-form Jacobians of CBN's moments against autodiff (conv and
//! linear layers) and the accuracy of the first-order compensation.

use crate::common;

use bnorm::core::compensation::HistoryEntries;
use bnorm::core::jacobian::{conv2d_moment_jacobians, linear_moment_jacobians, Conv2dGeometry};
use bnorm::core::moments::channel_mean;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Device;
use burn::tensor::Tensor;
use common::random::uniform;
use common::*;

/// A conv case: (C_in, C_out, kernel, stride, padding [[t,b],[l,r]], dilation, groups, bias).
type ConvCase = (
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [[usize; 2]; 2],
    [usize; 2],
    usize,
    bool,
);

const CONV_CASES: [ConvCase; 7] = [
    (3, 4, [3, 3], [1, 1], [[1, 1], [1, 1]], [1, 1], 1, false),
    (2, 6, [3, 2], [2, 1], [[0, 0], [1, 1]], [1, 1], 1, true),
    (4, 6, [3, 3], [1, 2], [[2, 2], [1, 1]], [2, 1], 2, true),
    (6, 6, [3, 3], [1, 1], [[1, 1], [1, 1]], [1, 1], 3, false),
    // Asymmetric ('Same' with an even kernel).
    (2, 3, [2, 2], [1, 1], [[0, 1], [0, 1]], [1, 1], 1, true),
    (2, 3, [2, 3], [1, 2], [[1, 0], [2, 1]], [1, 1], 1, false),
    // Stride 8 over 7 rows padded by 3: kernel row 2 reads only padding
    // (rows -1 and 7), so its patch sum is zero.
    (2, 3, [3, 3], [8, 1], [[3, 3], [1, 1]], [1, 1], 1, true),
];

/// The inputs of conv case `i`, the same on every backend (host-seeded):
/// `(x, weight, bias, a)` with `a` `[C_out]` weighting the channels.
fn conv_case_inputs(
    i: usize,
    case: &ConvCase,
    device: &Device,
) -> (Tensor<4>, Tensor<4>, Tensor<1>, Tensor<1>) {
    let &(cin, cout, k, _, _, _, groups, _) = case;
    let seed = i as u64;
    (
        uniform([2, cin, 7, 6], 10 + seed, -1.0, 1.5, device),
        uniform(
            [cout, cin / groups, k[0], k[1]],
            20 + seed,
            -0.5,
            0.5,
            device,
        ),
        uniform([cout], 30 + seed, -0.5, 0.5, device),
        uniform([cout], 40 + seed, 0.5, 1.5, device),
    )
}

fn conv_case_options(case: &ConvCase) -> ConvOptions<2> {
    let &(_, _, _, stride, padding, dilation, groups, _) = case;
    ConvOptions::new_with_padding(
        stride,
        [
            (padding[0][0], padding[0][1]),
            (padding[1][0], padding[1][1]),
        ],
        dilation,
        groups,
    )
}

/// Autodiff's gradients of `sum_c a_c mean_c` and `sum_c a_c meansq_c`
/// with respect to the weight, `[C_out, F]` each (row `c` is
/// `a_c d mean_c / dW_c`), on the host.
fn autodiff_moment_grads(i: usize, case: &ConvCase, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let &(cin, cout, k, _, _, _, groups, bias) = case;
    let f = cin / groups * k[0] * k[1];
    let (x, w0, b0, a) = conv_case_inputs(i, case, device);
    let grad = |square: bool| {
        let w = w0.clone().require_grad();
        let y = conv2d(
            x.clone(),
            w.clone(),
            bias.then(|| b0.clone()),
            conv_case_options(case),
        );
        let y = if square { y.square() } else { y };
        let grads = channel_mean(y).mul(a.clone()).sum().backward();
        to_vec(w.grad(&grads).unwrap().reshape([cout, f]))
    };
    (grad(false), grad(true))
}

/// `d mean_c / dW` and `d meansq_c / dW` in closed form, on the device
/// under test, equal burn autodiff's on ndarray (full float32), for
/// strides, paddings (asymmetric too), dilation and groups. Both go
/// through `check_matmul` (1e-4 on ndarray, TF32's 2e-3 on CUDA): the
/// closed-form `d mean / dW` (`P`) is two matrix products of 0/1 tap
/// selections with the batch-summed input, `d meansq / dW` (`Q`) a
/// weight-gradient convolution of a convolution's output (an H100 run with
/// autotune: 4.4e-4 relative when autodiff also ran there).
fn conv_jacobians(device: &Device) {
    for (i, case) in CONV_CASES.iter().enumerate() {
        let &(cin, cout, k, stride, padding, dilation, groups, bias) = case;
        let (auto_dmu, auto_dnu) = autodiff_moment_grads(i, case, &common::baseline());

        let (x, w, b, a) = conv_case_inputs(i, case, &device.clone().inner());
        let y = conv2d(x.clone(), w, bias.then_some(b), conv_case_options(case));
        let geometry = Conv2dGeometry {
            stride,
            padding,
            dilation,
            groups,
        };
        let w_shape = [cout, cin / groups, k[0], k[1]];
        let jac = conv2d_moment_jacobians(x, y, w_shape, geometry);
        let what = format!("conv case {i}");
        check_moment_jacobians(&what, (jac.mean, jac.mean_sq), a, (&auto_dmu, &auto_dnu));
    }
}

device_test!(conv_jacobians_equal_autodiff, conv_jacobians);

/// The linear layer's Jacobians equal autodiff's.
fn linear_jacobians(device: &Device) {
    let inner = &device.clone().inner();
    let (m, d_in, d_out) = (5, 4, 3);
    let x = uniform::<2>([m, d_in], 1, -1.0, 1.0, inner);
    let w0 = uniform::<2>([d_in, d_out], 2, -1.0, 1.0, inner);
    let b0 = uniform::<1>([d_out], 3, -1.0, 1.0, inner);
    let a = uniform::<1>([d_out], 4, 0.5, 1.5, device);
    let run = |square: bool| {
        let w = Tensor::<2>::from_inner(w0.clone()).require_grad();
        let y = Tensor::<2>::from_inner(x.clone())
            .matmul(w.clone())
            .add(Tensor::from_inner(b0.clone()).reshape([1, d_out]));
        let y_for_stat = if square {
            y.clone().square()
        } else {
            y.clone()
        };
        let grads = channel_mean(y_for_stat).mul(a.clone()).sum().backward();
        (w.grad(&grads).unwrap().transpose(), y.inner())
    };
    let (auto_dmu, y) = run(false);
    let (auto_dnu, _) = run(true);
    let jac = linear_moment_jacobians(x, y);
    let a_col = a.inner().reshape([d_out, 1]);
    let closed_dmu = jac.mean.expand([d_out, d_in]).mul(a_col.clone());
    let closed_dnu = jac.mean_sq.mul(a_col);
    // Both sides go through a matmul (the closed form's y^T x, autodiff's
    // backward of x W): TF32 on CUDA, see `check_matmul`.
    check_matmul(
        device,
        "linear d mean/dW",
        &closed_dmu.into_data(),
        &[d_out, d_in],
        &to_vec(auto_dmu),
    )
    .unwrap();
    check_matmul(
        device,
        "linear d meansq/dW",
        &closed_dnu.into_data(),
        &[d_out, d_in],
        &to_vec(auto_dnu),
    )
    .unwrap();
}

device_test!(linear_jacobians_equal_autodiff, linear_jacobians);

/// Compensation without weight copies: the mean (linear in W and b) is
/// compensated exactly to a new weight and bias; the mean of squares
/// (quadratic) up to exactly its second-order term. Checked against recomputing the statistics
/// at the new weights.
fn compensation_accuracy(device: &Device) {
    let inner = &device.clone().inner();
    let (cin, cout) = (3, 4);
    let x = uniform::<4>([2, cin, 6, 6], 1, -1.0, 1.0, inner);
    let w_old = uniform::<4>([cout, cin, 3, 3], 2, -0.5, 0.5, inner);
    let b_old = uniform::<1>([cout], 3, -0.5, 0.5, inner);
    let dw = uniform::<4>([cout, cin, 3, 3], 4, -0.01, 0.01, inner);
    let db = uniform::<1>([cout], 5, -0.01, 0.01, inner);
    let (x_keep, dw_keep, db_keep) = (x.clone(), dw.clone(), db.clone());
    let (w_new, b_new) = (w_old.clone().add(dw), b_old.clone().add(db));
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let stats = |w: Tensor<4>, b: Tensor<1>| {
        let y = conv2d(x.clone(), w, Some(b), options.clone());
        (y.clone(), channel_mean(y.clone()), channel_mean(y.square()))
    };
    let b_old_keep = b_old.clone();
    let (y_old, mu_old, nu_old) = stats(w_old.clone(), b_old);
    let (_, mu_new, nu_new) = stats(w_new.clone(), b_new.clone());
    let geometry = Conv2dGeometry {
        stride: [1, 1],
        padding: [[1, 1], [1, 1]],
        dilation: [1, 1],
        groups: 1,
    };
    let jac = conv2d_moment_jacobians(x, y_old, [cout, cin, 3, 3], geometry);
    let entry = HistoryEntries::record(
        mu_old.clone(),
        nu_old.clone(),
        jac,
        w_old.reshape([1, cout, cin * 9]),
        Some(b_old_keep),
    );
    let comp = entry.compensate(w_new.reshape([1, cout, cin * 9]), Some(b_new), 1.0);
    // Full float32: the recomputed statistics and the compensation.
    let (rtol, atol) = (1e-5, 1e-6);
    check_close(
        "compensated mean",
        &comp.mean.into_data(),
        &[1, cout],
        &to_vec(mu_new.clone()),
        rtol,
        atol,
    )
    .unwrap();
    // nu is quadratic in (W, b): the first-order compensation misses
    // exactly mean((conv(x, dW) + db)^2), and nothing else.
    let dy = conv2d(x_keep, dw_keep, Some(db_keep), options);
    let second_order = to_vec(channel_mean(dy.square()));
    let (nu_new, nu_old, nu_comp) = (to_vec(nu_new), to_vec(nu_old), to_vec(comp.mean_sq));
    for c in 0..cout {
        let drift = (nu_new[c] - nu_old[c]).abs();
        assert!(
            drift > 1e-4,
            "channel {c}: the weight change must move the statistics"
        );
        let predicted = nu_comp[c] + second_order[c];
        assert!(
            (predicted - nu_new[c]).abs() <= rtol * nu_new[c].abs() + atol / 10.0,
            "channel {c}: compensated {} + second order {} != recomputed {}",
            nu_comp[c],
            second_order[c],
            nu_new[c]
        );
    }
}

device_test!(compensation_is_first_order_exact, compensation_accuracy);
