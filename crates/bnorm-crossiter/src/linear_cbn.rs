use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use bnorm_core::linear_moment_jacobians;

use crate::{CrossIterBatchNorm, CrossIterBatchNormConfig, WeightLayout};

/// Configuration of a [`LinearCbn`]: burn's `LinearConfig` fields with the
/// same defaults, plus the CBN options in `norm` (its `num_features` is
/// taken from `d_output`).
#[derive(Config, Debug)]
pub struct LinearCbnConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features (the normalized channels).
    pub d_output: usize,
    /// Linear bias. Default: true, as burn's `LinearConfig`.
    #[config(default = true)]
    pub bias: bool,
    /// Weight initializer. Default: burn's.
    #[config(
        default = "Initializer::KaimingUniform{gain:0.577_350_269_189_625_8,fan_out_only:false}"
    )]
    pub initializer: Initializer,
    /// CBN options (`num_features` is overridden by `d_output`).
    #[config(default = "CrossIterBatchNormConfig::new(0)")]
    pub norm: CrossIterBatchNormConfig,
}

impl LinearCbnConfig {
    /// Sets the CBN window `k`.
    pub fn with_window(mut self, window: usize) -> Self {
        self.norm.window = window;
        self
    }

    /// Initializes the linear layer (as burn's `LinearConfig::init`) and its CBN.
    pub fn init(&self, device: &Device) -> LinearCbn {
        let linear = LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        let mut norm = self.norm.clone();
        norm.num_features = self.d_output;
        let layout = WeightLayout {
            groups: 1,
            patch_len: self.d_input,
        };
        LinearCbn {
            linear,
            norm: norm.init(layout, device),
        }
    }
}

/// A burn `Linear` followed by [`CrossIterBatchNorm`] over its output
/// features. The statistics of each feature run over every row: `N` for a
/// `[N, d_in]` input, `N * L` for `[N, L, d_in]`.
#[derive(Module, Debug)]
pub struct LinearCbn {
    /// The linear layer (weight `[d_input, d_output]`, burn's layout).
    pub linear: Linear,
    /// The normalization of its output.
    pub norm: CrossIterBatchNorm,
}

impl LinearCbn {
    /// `norm(linear(x))` over the last axis.
    ///
    /// # Shapes
    ///
    /// - `input`: `[batch_size, d_input]` or `[batch_size, length, d_input]`
    /// - output: the same with `d_output` last
    ///
    /// # Panics
    ///
    /// If the rank is not 2 or 3 or the last axis is not `d_input` long.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let [d_in, d_out] = self.linear.weight.dims();
        let dims = input.dims();
        if !(D == 2 || D == 3) || dims[D - 1] != d_in {
            panic!(
                "LinearCbn expects an input of shape [batch_size, {d_in}] or [batch_size, length, {d_in}], \
                 received {dims:?}"
            );
        }
        let rows: usize = dims[..D - 1].iter().product();
        let x = input.reshape([rows, d_in]);
        let y = self.linear.forward(x.clone());
        let mut out_dims = dims;
        out_dims[D - 1] = d_out;
        let out = if self.norm.is_training(&y.device()) {
            let weight = self
                .linear
                .weight
                .val()
                .transpose()
                .reshape([1, d_out, d_in]);
            let bias = self.linear.bias.as_ref().map(|b| b.val());
            let (x_values, y_values) = (x.detach(), y.clone().detach());
            self.norm.forward_with(y, weight, bias, || {
                linear_moment_jacobians(x_values, y_values)
            })
        } else {
            self.norm.forward_frozen(y)
        };
        out.reshape(out_dims)
    }
}
